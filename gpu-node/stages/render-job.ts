/**
 * One render, end to end, in this process, in diffusers' HunyuanVideoFramepackPipeline's order:
 * the encoders, then the section step (section-step.ts, the one the farm's handlers run) section
 * after section. The probe hook sees every intermediate under the reference's key names;
 * check-reference compares them (embedded `render` goes through the farm in one process instead).
 */
import type { Tensor, F32 } from "../../shared/tensor/tensor.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { initialHistory } from "../../shared/framepack/history.js";
import { usesTrueCfg, type RenderParams } from "../../shared/job/render-params.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { promptSchedule, sectionEmbeddings } from "../../shared/job/timed-prompts.js";
import { keyframeSchedule } from "../../shared/job/keyframes.js";
import { encodeText, type PromptEmbeddings } from "./encode-text.js";
import { encodeImageEmbeds, encodeImagePosterior, sampleKeyframeLatents, sampleLatents } from "./encode-image.js";
import { SectionVideo, decodeSection, runSectionStep } from "./section-step.js";
import type { LoraSource, ModelRuntime } from "../runtime/model-runtime.js";
import { FarmError } from "../../shared/errors.js";
import type { TextTokenizers } from "../text/tokenizers.js";

export interface RenderInputs {
  params: RenderParams;
  /** [1, 3, H, W] in [-1, 1], already at the render size. */
  firstPixels: F32;
  lastPixels: F32 | null;
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
  probe("image_pixels0", inputs.firstPixels);
  const first = await encodeImageEmbeds(runtime, inputs.firstPixels);
  probe("siglip_pixel_values0", first.siglipInput);
  // diffusers averages the end image's embeddings with the start image's into last_image_embeds
  // but conditions the transformer on image_embeds (the start image's) alone; we do the same.
  const imageEmbeds = first.embeds;
  probe("image_embeds", imageEmbeds);
  if (inputs.lastPixels !== null) {
    probe("image_pixels1", inputs.lastPixels);
    const last = await encodeImageEmbeds(runtime, inputs.lastPixels);
    probe("siglip_pixel_values1", last.siglipInput);
    probe("last_image_embeds", last.embeds);
  }

  // The generator's draws follow diffusers' order: start image posterior, end image posterior,
  // (keyframes' posteriors,) then each section's noise. --sampler unipc (lllyasviel's demo): the noise from a generator of
  // its own, the posterior samples from torch's global generator seeded with seed + 1.
  const generator = new TorchGenerator(params.seed);
  const imageGenerator = params.sampler === "unipc" ? new TorchGenerator((params.seed + 1n) % (1n << 64n)) : generator;
  const sf = manifest.vae.scaling_factor;
  const imageLatents = sampleLatents(await encodeImagePosterior(runtime, inputs.firstPixels), imageGenerator, sf);
  probe("image_latents", imageLatents);
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
  const video = new SectionVideo(plan, params.samplingType, manifest.vae.temporal_compression_ratio, params.sampler);
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
    video.add(await decodeSection(runtime, section, step.decodeLatents, probe));
  }

  const frames = video.finish();
  probe("frames_uint8", frames);
  return frames;
}
