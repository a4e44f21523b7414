/**
 * One render, end to end, in this process, in diffusers' HunyuanVideoFramepackPipeline's order:
 * the encoders, then the section step (section-step.ts, the one the farm's handlers run) section
 * after section. The probe hook sees every intermediate under the reference's key names;
 * check-reference compares them (embedded `render` goes through the farm in one process instead).
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { initialHistory } from "../../shared/framepack/history.js";
import { usesTrueCfg, type RenderParams } from "../../shared/job/render-params.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { promptSchedule, sectionEmbeddings } from "../../shared/job/timed-prompts.js";
import { keyframeSchedule } from "../../shared/job/keyframes.js";
import { encodeText, type PromptEmbeddings } from "./encode-text.js";
import { encodeImageEmbeds, encodeImagePosterior, sampleKeyframeLatents, sampleLatents } from "./encode-image.js";
import { encodeVideoEmbeds, encodeVideoPosterior, videoFramesAtSize } from "./encode-video.js";
import { SectionVideo, decodeSection, finishedFrames, runSectionStep } from "./section-step.js";
import { FarmError } from "../../shared/errors.js";
import type { LoraSource, ModelRuntime } from "../runtime/model-runtime.js";
import type { TextTokenizers } from "../text/tokenizers.js";

export interface RenderInputs {
  params: RenderParams;
  /** [1, 3, H, W] in [-1, 1], already at the render size; null when extending a video. */
  firstPixels: F32 | null;
  lastPixels: F32 | null;
  /** The video to extend, as uploaded (params.video says what it holds). */
  video?: Uint8Array;
  /** The keyframes' images, as params.keyframeTimes orders them, at the render size ([] or absent: none). */
  keyframePixels?: F32[];
  /** Reads params.loras' files (by SHA-256); needed when there are LoRAs. */
  loraSource?: LoraSource;
}

export interface RenderObserver {
  /** Intermediate tensors under the reference's names (e.g. "section0.noise"). */
  probe?(name: string, tensor: Tensor): void;
  onPlan?(sections: number, stepsPerSection: number): void;
  onStep?(section: number, step: number, steps: number): void;
  onStage?(label: string): void;
  signal?: AbortSignal;
}

export interface RenderContext {
  runtime: ModelRuntime;
  tokenizers: TextTokenizers;
}

function probePrompt(observer: RenderObserver, p: PromptEmbeddings, suffix: "0" | "1", prefix: "" | "negative_"): void {
  observer.probe?.(`llama_input_ids${suffix}`, p.llamaIds);
  observer.probe?.(`llama_attention_mask${suffix}`, p.llamaMask);
  observer.probe?.(`clip_input_ids${suffix}`, p.clipIds);
  observer.probe?.(`${prefix}prompt_embeds`, p.embeds);
  observer.probe?.(`${prefix}prompt_attention_mask`, p.mask);
  observer.probe?.(`${prefix}pooled_prompt_embeds`, p.pooled);
}

/** Renders the video and returns its frames as uint8 [T, H, W, 3]. */
export async function renderJob(
  ctx: RenderContext,
  inputs: RenderInputs,
  observer: RenderObserver = {},
): Promise<Tensor<"uint8">> {
  const { tokenizers } = ctx;
  const { params } = inputs;
  // The job's LoRAs fused into the transformer (a variant of its graphs; the other models as they are).
  const runtime = await ctx.runtime.withLoras(
    params.loras,
    inputs.loraSource ??
      ((ref) => Promise.reject(new FarmError("NOT_FOUND", `no file given for LoRA ${ref.name} (${ref.sha256})`))),
  );
  const manifest = runtime.bundle.manifest;
  const probe = (name: string, t: Tensor): void => observer.probe?.(name, t);

  observer.onStage?.("encoding prompt");
  // Prompts that change over time: each distinct prompt is encoded once (timed-prompts.ts), and
  // each section conditioned on its own (sectionEmbeddings, below).
  const plan = sectionPlanFor(params, manifest);
  const prompts = promptSchedule(params, plan);
  const encodedPrompts: PromptEmbeddings[] = [];
  for (const p of prompts.prompts) encodedPrompts.push(await encodeText(runtime, tokenizers, p));
  probePrompt(observer, encodedPrompts[0]!, "0", "");
  let negative: PromptEmbeddings | undefined;
  if (usesTrueCfg(params)) {
    negative = await encodeText(runtime, tokenizers, params.negativePrompt ?? "");
    probePrompt(observer, negative, "1", "negative_");
  }

  observer.onStage?.("encoding image");
  const video = params.video === null ? null : { bytes: inputs.video, params: params.video, plan: plan.video! };
  if (video !== null && video.bytes === undefined)
    throw new FarmError("INVALID_ARGUMENT", "the video to extend is missing");
  const size = sizeOf(params, inputs);
  let imageEmbeds: F32;
  if (video !== null) {
    // Extending a video: its first encoded frame's embedding, or the end image's (Studio).
    if (inputs.lastPixels === null) {
      const v = await encodeVideoEmbeds(runtime, video.bytes!, video.params, video.plan, size);
      probe("image_pixels0", v.pixels);
      probe("siglip_pixel_values0", v.siglipInput);
      imageEmbeds = v.embeds;
    } else {
      probe("image_pixels1", inputs.lastPixels);
      const last = await encodeImageEmbeds(runtime, inputs.lastPixels);
      probe("siglip_pixel_values1", last.siglipInput);
      imageEmbeds = last.embeds;
    }
  } else {
    if (inputs.firstPixels === null) throw new FarmError("INVALID_ARGUMENT", "the start image is missing");
    probe("image_pixels0", inputs.firstPixels);
    const first = await encodeImageEmbeds(runtime, inputs.firstPixels);
    probe("siglip_pixel_values0", first.siglipInput);
    // diffusers averages the end image's embeddings with the start image's into last_image_embeds
    // but conditions the transformer on image_embeds (the start image's) alone; we do the same.
    imageEmbeds = first.embeds;
    if (inputs.lastPixels !== null) {
      probe("image_pixels1", inputs.lastPixels);
      const last = await encodeImageEmbeds(runtime, inputs.lastPixels);
      probe("siglip_pixel_values1", last.siglipInput);
      probe("last_image_embeds", last.embeds);
    }
  }
  probe("image_embeds", imageEmbeds);

  // The generator's draws follow diffusers' order: start image posterior, end image posterior,
  // (keyframes' posteriors,) then each section's noise. --sampler unipc (lllyasviel's demo): the noise from a generator of
  // its own, the posterior samples from torch's global generator seeded with seed + 1.
  const generator = new TorchGenerator(params.seed);
  const imageGenerator = params.sampler === "unipc" ? new TorchGenerator((params.seed + 1n) % (1n << 64n)) : generator;
  const sf = manifest.vae.scaling_factor;
  // A video's latents stand where the start image's would (shared/framepack/history.ts).
  const imageLatents =
    video !== null
      ? sampleLatents(
          await encodeVideoPosterior(runtime, video.bytes!, video.params, video.plan, size),
          imageGenerator,
          sf,
        )
      : sampleLatents(await encodeImagePosterior(runtime, inputs.firstPixels!), imageGenerator, sf);
  probe(video !== null ? "video_latents" : "image_latents", imageLatents);
  let lastImageLatents: F32 | null = null;
  if (inputs.lastPixels !== null) {
    lastImageLatents = sampleLatents(await encodeImagePosterior(runtime, inputs.lastPixels), imageGenerator, sf);
    probe("last_image_latents", lastImageLatents);
  }
  // Keyframes (FramePack-eichi's): sampled after the end image, in plan order.
  const keyframes = keyframeSchedule(plan, params.keyframeTimes, params.fps);
  const keyframePixels = inputs.keyframePixels ?? [];
  if (keyframePixels.length !== params.keyframeTimes.length)
    throw new RangeError(`${params.keyframeTimes.length} keyframe times but ${keyframePixels.length} keyframe images`);
  keyframePixels.forEach((p, i) => probe(`keyframe${i}.pixels`, p));
  const keyframeLatents = await sampleKeyframeLatents(
    runtime,
    (i) => Promise.resolve(keyframePixels[i]!),
    keyframes.drawOrder,
    imageGenerator,
    sf,
  );
  keyframeLatents.forEach((l, i) => probe(`keyframe${i}.latents`, l));

  observer.onPlan?.(plan.sections.length, params.steps);

  let history = initialHistory(plan, imageLatents);
  const tc = manifest.vae.temporal_compression_ratio;
  const joined = new SectionVideo(plan, params.samplingType, tc, params.sampler);
  const decoded: F32[] = [];
  for (const section of plan.sections) {
    const k = section.index;
    const keyframe = keyframes.bySection[k] ?? null;
    observer.signal?.throwIfAborted();
    const step = await runSectionStep(
      runtime,
      {
        plan,
        section,
        history,
        imageLatents,
        lastImageLatents,
        keyframeLatents: keyframe === null ? null : keyframeLatents[keyframe]!,
        generator,
        prompt: sectionEmbeddings(prompts, k, encodedPrompts),
        ...(negative !== undefined ? { negative } : {}),
        imageEmbeds,
        params,
      },
      {
        onStep: (step, steps) => observer.onStep?.(k, step, steps),
        probe,
        ...(observer.signal !== undefined ? { signal: observer.signal } : {}),
      },
    );
    history = step.history;
    observer.onStage?.(`decoding section ${k + 1}/${plan.sections.length}`);
    const clip = await decodeSection(runtime, plan, section, step.decodeLatents, params, { probe });
    if (video === null) joined.add(clip);
    else decoded.push(clip);
  }

  const frames =
    video === null
      ? joined.finish()
      : await gather(
          finishedFrames(plan, params, tc, decoded, videoFramesAtSize(video.bytes!, video.params, size)).frames,
          size,
        );
  probe("frames_uint8", frames);
  return frames;
}

/** The render size: an exact size, or the start image's (a video job's size is always exact here). */
function sizeOf(params: RenderParams, inputs: RenderInputs): { height: number; width: number } {
  if ("height" in params.size) return params.size;
  const px = inputs.firstPixels;
  if (px === null) throw new FarmError("INVALID_ARGUMENT", "a video render needs an exact size");
  return { height: px.shape[2]!, width: px.shape[3]! };
}

/** Every frame of a stream as one uint8 [T, H, W, 3] tensor. */
async function gather(
  frames: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  size: { height: number; width: number },
): Promise<Tensor<"uint8">> {
  const all: Uint8Array[] = [];
  for await (const f of frames) all.push(f.slice());
  const out = new Uint8Array(all.length * size.height * size.width * 3);
  all.forEach((f, i) => out.set(f, i * f.length));
  return new Tensor("uint8", [all.length, size.height, size.width, 3], out);
}
