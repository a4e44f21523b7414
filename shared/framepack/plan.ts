/**
 * The section plan of one FramePack video: how many sections, in which order, each section's
 * latent padding, the frame indices its transformer call uses, which history it reads and what it
 * decodes, exactly as diffusers' HunyuanVideoFramepackPipeline does. Pure: the farm's planner and
 * the embedded renderer both start from this, so a section can be retried from the plan alone.
 */
import { FarmError } from "../errors.js";
import type { SamplingType } from "../bundle/manifest.js";
import { roundHalfEven } from "./frames.js";
import { checkLatentWindowSize } from "../job/render-params.js";
import { encodedFrames, videoLatentFrames } from "./video-context.js";

export interface PlanInput {
  samplingType: SamplingType;
  /** Pixel frames asked for (the output is longer: whole sections). */
  numFrames: number;
  latentWindowSize: number;
  hasEndImage: boolean;
  /**
   * [1x, 2x, 4x] history sizes in the order the sampling type stores them: inverted [1, 2, 16],
   * vanilla [16, 2, 1] (4x first). Defaults to the released checkpoints' sizes.
   */
  historySizes?: readonly [number, number, number];
  /** VAE temporal compression (4 for HunyuanVideo). */
  temporalCompression?: number;
  /**
   * How many sections: diffusers' ceil(num_frames / window_num_frames), or lllyasviel's demo's
   * max(round(seconds * 30 / (window * 4)), 1), read as round(num_frames / (window * temporal))
   * with Python's half-to-even round.
   */
  sectionCount?: "diffusers" | "demo";
  /** Extending a video (--video): its frame count and the context frames (README, "Extending a video"). */
  video?: { inputFrames: number; contextFrames: number };
}

/** How a plan that extends a video reads the video (null for a start image). */
export interface VideoPlan {
  /** Frames of the input video. */
  inputFrames: number;
  /** N: Studio's context frames; N - 1 latents of 1x context (the section next to the input: 1). */
  contextFrames: number;
  /** L: the video's last latents, encoded from its last `encodedFrames` frames. */
  latentFrames: number;
  encodedFrames: number;
  /** Index of the first encoded frame (its SigLIP embedding conditions the sections without an end image). */
  firstEncodedFrame: number;
  /** Frames cross-faded between the input's last frames and the generated part's first: windowNumFrames. */
  joinFrames: number;
}

/**
 * Where an inverted section that extends a video takes its 1x context (Studio's Video mode): `pre`
 * of the video's last latents at indices [0, pre), then `post` latents after the window: the end
 * image's (the first generated section, with one), zeros (the first without), else the front of
 * the history (what was generated after this window in time).
 */
export interface VideoSectionContext {
  pre: number;
  post: number;
  postFrom: "end_image" | "zeros" | "history";
}

export interface SectionIndices {
  /** indices_latents: the window being denoised. */
  latents: number[];
  /** indices_latents_clean: the start image (0) then the 1x history. */
  clean: number[];
  history2x: number[];
  history4x: number[];
}

/** Which latents a section decodes after denoising, and how its video joins the previous one. */
export interface SectionDecode {
  /** total_generated_latent_frames after this section: the length of real_history_latents. */
  realHistoryFrames: number;
  /** Latent frames decoded: all real history on the first section, else the index_slice. */
  latentFrames: number;
  /** Where in real_history_latents they are taken: inverted from the start, vanilla from the end. */
  from: "start" | "end";
  /** Pixel frames the decode yields: (latentFrames - 1) * temporal + 1. */
  videoFrames: number;
  /** Pixel frames cross-faded with the video so far (0 on the first section). */
  overlapFrames: number;
  /** Inverted sections join before the video so far (earlier in time), vanilla after it. */
  join: "prepend" | "append";
  /** Length of the video so far once this section is joined. */
  totalVideoFrames: number;
  /**
   * Extending a video: latents of the input video decoded before this section's own (the input's
   * last window, on the inverted section next to the input; included in latentFrames), else 0.
   */
  videoPrefix: number;
}

export interface Section {
  index: number;
  isFirst: boolean;
  isLast: boolean;
  /** Inverted sampling: latent frames of blank context between the start image and this window (padding * window). */
  latentPadding: number;
  indices: SectionIndices;
  /** Inverted: history is read from the front of history_latents; vanilla: from the back. */
  historyFrom: "start" | "end";
  /** The end image's latent replaces the 1x history (inverted, first section, with an end image). */
  useEndImage: boolean;
  /** The start image latent is prefixed to the denoised window before it joins history (inverted, last section). */
  prefixStartImage: boolean;
  /** Inverted sections extending a video: where the 1x context comes from (else null). */
  videoContext: VideoSectionContext | null;
  decode: SectionDecode;
}

export interface SectionPlan {
  samplingType: SamplingType;
  numFrames: number;
  latentWindowSize: number;
  hasEndImage: boolean;
  historySizes: readonly [number, number, number];
  temporalCompression: number;
  /** Pixel frames one section's window spans: (window - 1) * temporal + 1. */
  windowNumFrames: number;
  sections: Section[];
  /** Frames blended between consecutive decoded sections (= windowNumFrames). */
  overlapFrames: number;
  /** Frames of the finished video (diffusers renders whole sections, so more than numFrames; with a video, its frames too). */
  outputFrames: number;
  /** Extending a video: how its frames are read; null for a start image. */
  video: VideoPlan | null;
}

export const DEFAULT_HISTORY_SIZES: Readonly<Record<SamplingType, readonly [number, number, number]>> = {
  inverted_anti_drifting: [1, 2, 16],
  vanilla: [16, 2, 1],
};

/** Guards against plans whose arrays would not fit in memory; far beyond any real video. */
const MAX_FRAMES = 1_000_000;

const range = (start: number, length: number): number[] => Array.from({ length }, (_, i) => start + i);

/** Inverted sampling's latent paddings (in windows), in generation order. */
export function latentPaddings(numSections: number): number[] {
  if (numSections > 4) return [3, ...new Array<number>(numSections - 3).fill(2), 1, 0];
  return range(0, numSections).reverse();
}

function invertedIndices(padding: number, w: number, hs: readonly [number, number, number]): SectionIndices {
  // arange split as [prefix 1, padding, latents w, 1x, 2x, 4x]
  const latentsStart = 1 + padding;
  const oneX = latentsStart + w;
  return {
    latents: range(latentsStart, w),
    clean: [0, ...range(oneX, hs[0])],
    history2x: range(oneX + hs[0], hs[1]),
    history4x: range(oneX + hs[0] + hs[1], hs[2]),
  };
}

function vanillaIndices(w: number, hs: readonly [number, number, number]): SectionIndices {
  // arange split as [prefix 1, 4x, 2x, 1x, latents w] with hs = [4x, 2x, 1x]
  const [n4, n2, n1] = hs;
  return {
    history4x: range(1, n4),
    history2x: range(1 + n4, n2),
    clean: [0, ...range(1 + n4 + n2, n1)],
    latents: range(1 + n4 + n2 + n1, w),
  };
}

/** Studio's Video mode: arange split as [pre, padding, latents w, post, 2x, 4x]. */
function invertedVideoIndices(
  ctx: VideoSectionContext,
  padding: number,
  w: number,
  hs: readonly [number, number, number],
): SectionIndices {
  const latentsStart = ctx.pre + padding;
  const post = latentsStart + w;
  return {
    latents: range(latentsStart, w),
    clean: [...range(0, ctx.pre), ...range(post, ctx.post)],
    history2x: range(post + ctx.post, hs[1]),
    history4x: range(post + ctx.post + hs[1], hs[2]),
  };
}

function requireInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new FarmError("INVALID_ARGUMENT", `${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

export function planSections(input: PlanInput): SectionPlan {
  const { samplingType } = input;
  if (samplingType !== "inverted_anti_drifting" && samplingType !== "vanilla") {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `sampling_type must be "inverted_anti_drifting" or "vanilla", got ${JSON.stringify(samplingType)}`,
    );
  }
  const numFrames = requireInt("num_frames", input.numFrames, 1, MAX_FRAMES);
  const w = checkLatentWindowSize(input.latentWindowSize);
  const tc = requireInt("temporal_compression", input.temporalCompression ?? 4, 1, 64);
  if (typeof input.hasEndImage !== "boolean")
    throw new FarmError("INVALID_ARGUMENT", "has_end_image must be a boolean");
  const given = input.historySizes ?? DEFAULT_HISTORY_SIZES[samplingType];
  if (given.length !== 3)
    throw new FarmError("INVALID_ARGUMENT", `history_sizes must have 3 entries, got ${given.length}`);
  given.forEach((s, i) => requireInt(`history_sizes[${i}]`, s, 1, 1024));
  const inverted = samplingType === "inverted_anti_drifting";
  if (input.hasEndImage && !inverted) {
    // diffusers raises here too: only anti-drifting sampling conditions on an end frame.
    throw new FarmError("INVALID_ARGUMENT", "an end image (last_image) needs sampling_type inverted_anti_drifting");
  }
  const windowNumFrames = (w - 1) * tc + 1;
  const video = input.video === undefined ? null : videoPlan(input.video, w, tc, windowNumFrames);
  // A video's 1x context is N - 1 latents (Studio's effective_clean_frames); 2x and 4x keep their sizes.
  const e = video === null ? 0 : video.contextFrames - 1;
  const hs: readonly [number, number, number] =
    video === null ? given : inverted ? [e, given[1], given[2]] : [given[0], given[1], e];
  const n =
    input.sectionCount === "demo"
      ? Math.max(1, roundHalfEven(numFrames / (w * tc)))
      : Math.max(1, Math.ceil(numFrames / windowNumFrames));
  const paddings = latentPaddings(n);
  const toVideo = (latents: number): number => (latents - 1) * tc + 1;
  // Real history: vanilla's starts with the start image latent, or the video's latents (PR #491).
  let generated = inverted ? 0 : (video?.latentFrames ?? 1);
  // Vanilla joins each section after the video so far, which with a video starts as its frames.
  let total = !inverted && video !== null ? video.inputFrames : 0;
  const sections: Section[] = range(0, n).map((k) => {
    const isFirst = k === 0;
    const isLast = k === n - 1;
    const prefixStartImage = inverted && isLast && video === null;
    generated += w + (prefixStartImage ? 1 : 0);
    const padding = inverted ? paddings[k]! * w : 0;
    // With a video, the section next to it decodes the input's last window before its own.
    const videoPrefix = video !== null && inverted && isLast ? w : 0;
    const sliceFrames = prefixStartImage ? 2 * w + 1 : 2 * w;
    const decodeAll = isFirst && (video === null || inverted);
    const latentFrames = videoPrefix + (decodeAll ? generated : Math.min(sliceFrames, generated));
    const videoFrames = toVideo(latentFrames);
    const overlapFrames = decodeAll ? 0 : windowNumFrames;
    total += videoFrames - overlapFrames;
    // Inverted: the input joins before the generated part once it is complete.
    if (video !== null && inverted && isLast) total += video.inputFrames - video.joinFrames;
    const videoContext =
      video !== null && inverted ? invertedVideoContext(k, paddings[k]!, e, input.hasEndImage) : null;
    return {
      index: k,
      isFirst,
      isLast,
      latentPadding: padding,
      indices:
        videoContext !== null
          ? invertedVideoIndices(videoContext, padding, w, hs)
          : inverted
            ? invertedIndices(padding, w, hs)
            : vanillaIndices(w, hs),
      historyFrom: inverted ? "start" : "end",
      useEndImage: inverted && input.hasEndImage && isFirst,
      prefixStartImage,
      videoContext,
      decode: {
        realHistoryFrames: generated,
        latentFrames,
        from: inverted ? "start" : "end",
        videoFrames,
        overlapFrames,
        join: inverted ? "prepend" : "append",
        totalVideoFrames: total,
        videoPrefix,
      },
    };
  });
  return {
    samplingType,
    numFrames,
    latentWindowSize: w,
    hasEndImage: input.hasEndImage,
    historySizes: hs,
    temporalCompression: tc,
    windowNumFrames,
    sections,
    overlapFrames: windowNumFrames,
    // diffusers trims the joined video to (T - 1) // tc * tc + 1 frames; a video's whole input is kept.
    outputFrames: video === null ? Math.floor((total - 1) / tc) * tc + 1 : total,
    video,
  };
}

/**
 * The latent frames of section k's decode that section k + 1's decode takes again (FramePack
 * decodes each section beside latents of the one before: inverted [new, previous first half],
 * vanilla [previous second half, new]), as [first, first + count) of section k's decoded latents;
 * null when none are (the last section). The decoder keeps their tiles (decoded-tile-cache.ts).
 */
export function latentsDecodedAgain(plan: SectionPlan, k: number): { first: number; count: number } | null {
  const current = plan.sections[k]?.decode;
  const next = plan.sections[k + 1]?.decode;
  if (current === undefined || next === undefined) return null;
  const added = next.realHistoryFrames - current.realHistoryFrames;
  const count = Math.min(current.latentFrames - current.videoPrefix, next.latentFrames - next.videoPrefix - added);
  if (count <= 0) return null;
  return current.from === "start"
    ? { first: current.videoPrefix, count }
    : { first: current.latentFrames - count, count };
}

function videoPlan(v: NonNullable<PlanInput["video"]>, w: number, tc: number, windowNumFrames: number): VideoPlan {
  const inputFrames = requireInt("video frames", v.inputFrames, 1, MAX_FRAMES);
  const contextFrames = requireInt("context frames", v.contextFrames, 2, 64);
  const latentFrames = videoLatentFrames(inputFrames, w, tc);
  if (latentFrames < Math.max(contextFrames, w))
    throw new FarmError(
      "INVALID_ARGUMENT",
      `a video of ${inputFrames} frames gives ${latentFrames} latent frames; ${contextFrames} context frames and window ${w} need ${Math.max(contextFrames, w)}`,
    );
  const encoded = encodedFrames(latentFrames, tc);
  return {
    inputFrames,
    contextFrames,
    latentFrames,
    encodedFrames: encoded,
    firstEncodedFrame: inputFrames - encoded,
    joinFrames: windowNumFrames,
  };
}

/** Studio's video_prepare_clean_latents_and_indices: 1 pre frame next to the input, else N - 1. */
function invertedVideoContext(k: number, padding: number, e: number, hasEndImage: boolean): VideoSectionContext {
  const pre = padding === 0 ? 1 : e;
  if (k > 0) return { pre, post: pre, postFrom: "history" };
  return hasEndImage ? { pre, post: 1, postFrom: "end_image" } : { pre, post: pre, postFrom: "zeros" };
}
