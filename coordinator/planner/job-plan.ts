/**
 * A job as a DAG of stage tasks: encode_text, encode_image and vae_encode first, then the
 * sections' denoise tasks strictly in order (each needs the previous section's history), each
 * section's decode as soon as its latents exist (overlapping the next denoise), and mux last.
 * The last section generated has no decode task of its own: the mux decodes it, encoding its
 * frames as its tiles come (inverted sampling generates the video's opening last, so otherwise
 * the whole encode would wait for that decode and its trip through storage).
 * Every task names its inputs and outputs by deterministic object keys, and every task that draws
 * random numbers carries its generator position, so a retried task redraws the same noise.
 */
import type { SectionPlan } from "../../shared/framepack/plan.js";
import { drawsForRandn } from "../../shared/sampler/torch-rng.js";
import { validateObjectKey } from "../../shared/store/object-store.js";
import { FarmError } from "../../shared/errors.js";
import type { StageKind, StageTask } from "../../shared/farm/protocol.js";
import { jobKeys } from "../../shared/farm/keys.js";
import type { JobOutput } from "../../shared/job/job-spec.js";

export interface JobPlanInput {
  jobId: string;
  seed: bigint;
  sections: SectionPlan;
  hasEndImage: boolean;
  /** How many keyframes (their images under jobKeys().keyframeImage), 0 when none. */
  keyframes?: number;
  trueCfg: boolean;
  /** Latent tensor geometry: channels, height/8, width/8. */
  latent: { channels: number; height: number; width: number };
  /** The video's format and whether the frames are kept as PNGs (default: an MP4 alone). */
  output?: JobOutput;
  /** The job's recipe is stored (under jobKeys().recipe) for the mux to embed in the video. */
  recipe?: boolean;
  /**
   * diffusers (default): one generator for the image latents' sample(s) (start, end, keyframes), then each section's
   * noise. demo (lllyasviel's, --sampler unipc): each section's noise from a generator seeded with
   * seed alone; the image latents' sample(s) from torch's global generator, which framefarm seeds
   * with seed + 1 (mod 2^64) right before.
   */
  rng?: "diffusers" | "demo";
}

const JOB_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function planJob(input: JobPlanInput): StageTask[] {
  const { jobId, sections: plan, latent } = input;
  if (!JOB_ID.test(jobId))
    throw new FarmError("INVALID_ARGUMENT", `job id ${JSON.stringify(jobId)} must be 1-64 of [A-Za-z0-9_-]`);
  const keys = jobKeys(jobId);
  const seed = input.seed.toString();
  const id = (kind: StageKind, k?: number): string => (k === undefined ? `${jobId}.${kind}` : `${jobId}.${kind}.${k}`);

  const text: StageTask = {
    id: id("encode_text"),
    jobId,
    kind: "encode_text",
    dependsOn: [],
    inputs: {},
    outputs: { prompt: keys.promptEmbeds, ...(input.trueCfg ? { negative: keys.negativeEmbeds } : {}) },
  };
  // A job extending a video starts from it instead of a start image (plan.video).
  const video = plan.video !== null;
  const last: Record<string, string> = input.hasEndImage ? { last: keys.lastImage } : {};
  const images = video ? { video: keys.inputVideo, ...last } : { first: keys.firstImage, ...last };
  const image: StageTask = {
    id: id("encode_image"),
    jobId,
    kind: "encode_image",
    dependsOn: [],
    // With a video, the image conditioning is its first encoded frame's, or the end image's (Studio).
    inputs: video ? (input.hasEndImage ? last : { video: keys.inputVideo }) : images,
    outputs: { embeds: keys.imageEmbeds },
  };
  // Only the VAE encodes keyframes: the transformer's image embeddings are the start image's (eichi).
  const keyframes = input.keyframes ?? 0;
  const keyframeImages = Object.fromEntries(
    Array.from({ length: keyframes }, (_, i) => [`keyframe${i}`, keys.keyframeImage(i)]),
  );
  // diffusers draws the start image's posterior sample (a video's: all its latents at once), the
  // end image's, then each section's noise (keyframes' samples come between, shared/job/keyframes.ts).
  const imageDraws = drawsForRandn(latent.channels * latent.height * latent.width);
  const posteriorDraws =
    plan.video === null
      ? imageDraws
      : drawsForRandn(latent.channels * plan.video.latentFrames * latent.height * latent.width);
  const demo = input.rng === "demo";
  const vae: StageTask = {
    id: id("vae_encode"),
    jobId,
    kind: "vae_encode",
    dependsOn: [],
    inputs: { ...images, ...keyframeImages },
    outputs: { latents: keys.imageLatents },
    rng: { seed: demo ? ((input.seed + 1n) % (1n << 64n)).toString() : seed, offset: 0 },
  };
  const noiseDraws = drawsForRandn(latent.channels * plan.latentWindowSize * latent.height * latent.width);
  const firstNoise = demo ? 0 : posteriorDraws + imageDraws * ((input.hasEndImage ? 1 : 0) + keyframes);

  const tasks: StageTask[] = [text, image, vae];
  const decodes: string[] = [];
  const lastSection = plan.sections.length - 1;
  for (const s of plan.sections) {
    const k = s.index;
    const conditioning = { ...text.outputs, imageEmbeds: keys.imageEmbeds, imageLatents: keys.imageLatents };
    tasks.push({
      id: id("denoise", k),
      jobId,
      kind: "denoise",
      section: k,
      dependsOn: k === 0 ? [text.id, image.id, vae.id] : [id("denoise", k - 1)],
      inputs: k === 0 ? conditioning : { ...conditioning, history: keys.history(k - 1) },
      outputs: { history: keys.history(k) },
      rng: { seed, offset: firstNoise + k * noiseDraws },
    });
    if (k === lastSection) break;
    tasks.push({
      id: id("decode", k),
      jobId,
      kind: "decode",
      section: k,
      dependsOn: [id("denoise", k)],
      inputs: { history: keys.history(k) },
      outputs: { video: keys.sectionVideo(k), preview: keys.sectionPreview(k) },
    });
    decodes.push(id("decode", k));
  }
  tasks.push({
    id: id("mux"),
    jobId,
    kind: "mux",
    dependsOn: [...decodes, id("denoise", lastSection)],
    inputs: {
      ...Object.fromEntries(
        plan.sections.map((s) =>
          s.index === lastSection
            ? [`latents${s.index}`, keys.history(s.index)]
            : [`section${s.index}`, keys.sectionVideo(s.index)],
        ),
      ),
      ...(input.recipe === true ? { recipe: keys.recipe } : {}),
      // The output begins with the input video's frames.
      ...(video ? { video: keys.inputVideo } : {}),
    },
    outputs: {
      video: input.output?.format === "webm" ? keys.webm : keys.video,
      ...(input.output?.saveFrames === true ? { frames: keys.frames } : {}),
    },
  });
  for (const t of tasks)
    for (const k of [...Object.values(t.inputs), ...Object.values(t.outputs)]) validateObjectKey(k);
  return tasks;
}

/** Tasks whose dependencies are all done and that are not done or running themselves. */
export function readyTasks(
  tasks: readonly StageTask[],
  done: ReadonlySet<string>,
  running: ReadonlySet<string>,
): StageTask[] {
  return tasks.filter((t) => !done.has(t.id) && !running.has(t.id) && t.dependsOn.every((d) => done.has(d)));
}
