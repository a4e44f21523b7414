/**
 * History bookkeeping between sections: the clean-context tensors a section's transformer call
 * sees, and how its result joins the history. Mirrors diffusers' pipeline loop; pure. A plan that
 * extends a video (plan.video) takes the input video's latents where the others take the start
 * image's, with FramePack-Studio's contexts (README, "Extending a video").
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { cat, narrow, split } from "../tensor/ops.js";
import type { Section, SectionPlan } from "./plan.js";

export interface History {
  /** All latents so far: [1, C, frames, h, w] (inverted: newest first; vanilla: newest last). */
  latents: F32;
  /** How many of those frames are generated (the rest is the zero padding / start image). */
  generated: number;
}

export interface SectionContextTensors {
  latentsClean: F32;
  history2x: F32;
  history4x: F32;
}

const historyTotal = (plan: SectionPlan): number => plan.historySizes[0] + plan.historySizes[1] + plan.historySizes[2];

/**
 * Zeros for the packed history; vanilla sampling appends the start image latent. With a video
 * (imageLatents: its L latents) vanilla appends them all and counts them as real history (PR
 * #491); inverted starts from them, generated latents going in front (Studio's Video mode).
 */
export function initialHistory(plan: SectionPlan, imageLatents: F32): History {
  const [b, c, frames, h, w] = imageLatents.shape as [number, number, number, number, number];
  if (plan.video !== null && frames !== plan.video.latentFrames)
    throw new RangeError(`the plan reads ${plan.video.latentFrames} video latents, got ${imageLatents.describe()}`);
  if (plan.video !== null && plan.samplingType === "inverted_anti_drifting")
    return { latents: imageLatents, generated: 0 };
  const zeros = Tensor.zeros([b, c, historyTotal(plan), h, w]);
  if (plan.samplingType === "vanilla") return { latents: cat([zeros, imageLatents], 2), generated: frames };
  return { latents: zeros, generated: 0 };
}

/** The last `count` latent frames of the video, zeros standing in for any before its start. */
function videoTail(video: F32, count: number, skipLast: number): F32 {
  const frames = video.shape[2]! - skipLast;
  if (frames >= count) return narrow(video, 2, frames - count, count);
  const [b, c, , h, w] = video.shape as [number, number, number, number, number];
  const zeros = Tensor.zeros([b, c, count - frames, h, w]);
  return frames === 0 ? zeros : cat([zeros, narrow(video, 2, 0, frames)], 2);
}

/**
 * Studio's video_prepare_clean_latents_and_indices: the video's last `pre` latents, then `post`
 * latents (end image, zeros, or the history's front), and the 2x and 4x context from the video's
 * latents before the `pre` ones (zeros before its start).
 */
function invertedVideoContext(
  plan: SectionPlan,
  section: Section,
  history: History,
  video: F32,
  lastImageLatents: F32 | null,
): SectionContextTensors {
  const ctx = section.videoContext!;
  const [, n2x, n4x] = plan.historySizes;
  const [fourX, twoX] = split(videoTail(video, n2x + n4x, ctx.pre), 2, [n4x, n2x]) as [F32, F32];
  let post: F32;
  if (ctx.postFrom === "end_image") {
    if (lastImageLatents === null) throw new RangeError(`section ${section.index} needs the end image latents`);
    post = lastImageLatents;
  } else if (ctx.postFrom === "zeros") {
    const [b, c, , h, w] = video.shape as [number, number, number, number, number];
    post = Tensor.zeros([b, c, ctx.post, h, w]);
  } else {
    // The history holds the video's latents behind the generated ones, so it is never this short.
    if (history.latents.shape[2]! < ctx.post)
      throw new RangeError(
        `section ${section.index} reads ${ctx.post} history frames, got ${history.latents.describe()}`,
      );
    post = narrow(history.latents, 2, 0, ctx.post);
  }
  return { latentsClean: cat([videoTail(video, ctx.pre, 0), post], 2), history2x: twoX, history4x: fourX };
}

/**
 * The clean latents (start image + 1x history), 2x and 4x history for one section. A keyframe's
 * latent (inverted only: shared/job/keyframes.ts) takes the start image's slot.
 */
export function sectionContext(
  plan: SectionPlan,
  section: Section,
  history: History,
  imageLatents: F32,
  lastImageLatents: F32 | null,
  keyframeLatents: F32 | null = null,
): SectionContextTensors {
  const total = historyTotal(plan);
  if (plan.video !== null && keyframeLatents !== null)
    throw new RangeError("keyframes take the start image's slot, which a video extension does not have");
  if (section.videoContext !== null)
    return invertedVideoContext(plan, section, history, imageLatents, lastImageLatents);
  // With a video, its last latent is the start latent (Studio's Video F1).
  const start = plan.video === null ? imageLatents : narrow(imageLatents, 2, imageLatents.shape[2]! - 1, 1);
  if (plan.samplingType === "inverted_anti_drifting") {
    const [oneX, twoX, fourX] = split(narrow(history.latents, 2, 0, total), 2, plan.historySizes) as [F32, F32, F32];
    // The end image stands in for the 1x history of the first generated (last in time) section.
    if (section.useEndImage && lastImageLatents === null)
      throw new RangeError(`section ${section.index} needs the end image latents`);
    const clean1x = section.useEndImage && lastImageLatents !== null ? lastImageLatents : oneX;
    return { latentsClean: cat([keyframeLatents ?? imageLatents, clean1x], 2), history2x: twoX, history4x: fourX };
  }
  if (keyframeLatents !== null) throw new RangeError("keyframes need inverted sampling");
  const frames = history.latents.shape[2]!;
  const [fourX, twoX, oneX] = split(narrow(history.latents, 2, frames - total, total), 2, plan.historySizes) as [
    F32,
    F32,
    F32,
  ];
  return { latentsClean: cat([start, oneX], 2), history2x: twoX, history4x: fourX };
}

export interface AppendResult {
  /** The history a later section reads: bounded (keptHistoryFrames), whatever the video's length. */
  history: History;
  /** The latents to decode for this section (still multiplied by the VAE scaling factor). */
  decodeLatents: F32;
}

/**
 * How many latent frames of the history any later step reads: the packed context (1x + 2x + 4x)
 * and the longest decode (two windows and the start image). diffusers keeps every latent ever
 * generated (its history grows with the video); everything past this many frames is never read
 * again, so the farm's history objects keep only these and stay one size for any length.
 */
export const keptHistoryFrames = (plan: SectionPlan): number => historyTotal(plan) + 2 * plan.latentWindowSize + 1;

/**
 * Adds a denoised section to the history. The first section decodes all generated history;
 * later ones decode their own window plus one window of overlap (and the start image on the last
 * inverted section), which the caller soft-appends to the video.
 */
export function appendSection(
  plan: SectionPlan,
  section: Section,
  history: History,
  latents: F32,
  imageLatents: F32,
): AppendResult {
  const { realHistoryFrames, latentFrames } = section.decode;
  const keep = keptHistoryFrames(plan);
  if (plan.samplingType === "inverted_anti_drifting") {
    // Newest first: the context and the decode read the head.
    const added = section.prefixStartImage ? cat([imageLatents, latents], 2) : latents;
    const generated = history.generated + added.shape[2]!;
    checkPlan(section, generated, realHistoryFrames);
    const all = cat([added, history.latents], 2);
    const { videoPrefix } = section.decode;
    return {
      history: { latents: all.shape[2]! > keep ? narrow(all, 2, 0, keep) : all, generated },
      // The section next to the input video decodes the input's last window before its own.
      decodeLatents:
        videoPrefix === 0
          ? narrow(all, 2, 0, latentFrames)
          : cat([videoTail(imageLatents, videoPrefix, 0), narrow(all, 2, 0, latentFrames - videoPrefix)], 2),
    };
  }
  // Newest last: the context and the decode read the tail.
  const generated = history.generated + latents.shape[2]!;
  checkPlan(section, generated, realHistoryFrames);
  const all = cat([history.latents, latents], 2);
  const frames = all.shape[2]!;
  return {
    history: { latents: frames > keep ? narrow(all, 2, frames - keep, keep) : all, generated },
    decodeLatents: narrow(all, 2, frames - latentFrames, latentFrames),
  };
}

/** A history that disagrees with the plan means sections were applied out of order. */
function checkPlan(section: Section, generated: number, planned: number): void {
  if (generated !== planned)
    throw new RangeError(
      `section ${section.index}: history holds ${generated} generated frames, the plan expects ${planned}`,
    );
}

export interface SectionInputs extends SectionContextTensors {
  indicesLatents: Tensor<"int64">;
  indicesClean: Tensor<"int64">;
  indices2x: Tensor<"int64">;
  indices4x: Tensor<"int64">;
}

/** Everything a section's transformer calls take besides latents and conditioning. */
export function sectionInputs(
  plan: SectionPlan,
  section: Section,
  history: History,
  imageLatents: F32,
  lastImageLatents: F32 | null,
  keyframeLatents: F32 | null = null,
): SectionInputs {
  const ix = section.indices;
  return {
    ...sectionContext(plan, section, history, imageLatents, lastImageLatents, keyframeLatents),
    indicesLatents: Tensor.i64([ix.latents.length], ix.latents),
    indicesClean: Tensor.i64([ix.clean.length], ix.clean),
    indices2x: Tensor.i64([ix.history2x.length], ix.history2x),
    indices4x: Tensor.i64([ix.history4x.length], ix.history4x),
  };
}
