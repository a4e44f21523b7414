/**
 * Executes one planned stage task: reads its inputs from the object store, runs the stage, and
 * writes its outputs under the task's keys. Outputs are written only if absent, so when a task is
 * retried after another attempt already committed, the committed objects stay as they are (and
 * are identical anyway: every input and generator position is fixed by the plan).
 */
import { FarmError } from "../../shared/errors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { decodeTensorObject, encodeTensorObject } from "../../shared/tensor/tensor-object.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { CachedObject, TensorCache } from "./tensor-cache.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import { renderParamsOf, type JobSpec } from "../../shared/job/job-spec.js";
import { usesTrueCfg } from "../../shared/job/render-params.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { flowMatchSchedule, imageSeqLen } from "../../shared/sampler/flow-match.js";
import { appendSection, initialHistory, sectionInputs, type History } from "../../shared/framepack/history.js";
import { VideoAccumulator } from "../../shared/framepack/video-accumulator.js";
import { trimFrameCount, videoToUint8Frames } from "../../shared/framepack/frames.js";
import { decodeImage, prepareImage } from "../../shared/image/decode.js";
import { writeMp4, type Mp4Options } from "../../shared/video/mp4.js";
import { encodeText, type PromptEmbeddings } from "../stages/encode-text.js";
import { encodeImageEmbeds, encodeImagePosterior, sampleLatents } from "../stages/encode-image.js";
import { denoiseSection, type TextConditioning } from "../stages/denoise-section.js";
import { decodeVideo, toVaeLatents } from "../stages/decode-latents.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { TextTokenizers } from "../text/tokenizers.js";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

export interface WorkerContext {
  runtime: ModelRuntime;
  tokenizers: TextTokenizers;
  store: ObjectStore;
  /** Decoded objects this node wrote or read (all objects are write-once). */
  cache?: TensorCache;
}

export interface TaskObserver {
  onStep?(step: number, steps: number): void;
  signal?: AbortSignal;
}

type Tensors = Record<string, Tensor>;

async function readTensors(ctx: WorkerContext, key: string): Promise<CachedObject> {
  const hit = ctx.cache?.get(key);
  if (hit !== undefined) return hit;
  const value = decodeTensorObject(await ctx.store.get(key), key);
  ctx.cache?.set(key, value);
  return value;
}

function need<T extends Tensor = F32>(tensors: Map<string, Tensor>, name: string, key: string): T {
  const t = tensors.get(name);
  if (t === undefined) throw new FarmError("DATA_LOSS", `object ${key} lacks tensor ${name}`);
  return t as T;
}

async function writeOnce(ctx: WorkerContext, key: string, tensors: Tensors, metadata: Record<string, string> = {}): Promise<void> {
  const bytes = encodeTensorObject(tensors, metadata);
  if (await ctx.store.putIfAbsent(key, bytes, "application/octet-stream")) ctx.cache?.set(key, { tensors: new Map(Object.entries(tensors)), metadata });
}

async function pixels(ctx: WorkerContext, spec: JobSpec, key: string, what: string): Promise<F32> {
  return prepareImage(await decodeImage(await ctx.store.get(key), undefined, what), spec.height, spec.width);
}

function conditioning(t: Map<string, Tensor>, key: string): TextConditioning {
  return { embeds: need(t, "embeds", key), mask: need(t, "mask", key), pooled: need(t, "pooled", key) };
}

const promptTensors = (p: PromptEmbeddings): Tensors => ({ embeds: p.embeds, mask: p.mask, pooled: p.pooled });

/** The mux task's frames: every section's decoded video soft-appended in plan order. */
export async function assembleFrames(ctx: WorkerContext, task: StageTask, spec: JobSpec): Promise<Tensor<"uint8">> {
  const plan = sectionPlanFor(renderParamsOf(spec), ctx.runtime.bundle.manifest);
  const acc = new VideoAccumulator(spec.params.samplingType, plan.overlapFrames);
  let decoded = 0;
  for (const s of plan.sections) {
    const key = task.inputs[`section${s.index}`]!;
    const video = need((await readTensors(ctx, key)).tensors, "video", key);
    decoded += video.shape[2]! - (decoded === 0 ? 0 : plan.overlapFrames);
    acc.add(video);
  }
  return acc.finish(trimFrameCount(decoded, ctx.runtime.bundle.manifest.vae.temporal_compression_ratio));
}

/** Encodes frames as an MP4 object under key, unless one is there already. */
async function writeVideoObject(store: ObjectStore, key: string, frames: Tensor<"uint8">, options: Mp4Options): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-mp4-"));
  try {
    const file = path.join(dir, "video.mp4");
    await writeMp4(frames, file, options);
    await store.putIfAbsent(key, new Uint8Array(await readFile(file)), "video/mp4");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runStageTask(ctx: WorkerContext, task: StageTask, spec: JobSpec, observer: TaskObserver = {}): Promise<void> {
  const { store, runtime } = ctx;
  const params = renderParamsOf(spec);
  switch (task.kind) {
    case "encode_text": {
      await writeOnce(ctx, task.outputs["prompt"]!, promptTensors(await encodeText(runtime, ctx.tokenizers, params.prompt)));
      if (usesTrueCfg(params)) await writeOnce(ctx, task.outputs["negative"]!, promptTensors(await encodeText(runtime, ctx.tokenizers, params.negativePrompt ?? "")));
      return;
    }
    case "encode_image": {
      // diffusers conditions the transformer on the start image's embeddings only.
      const { embeds } = await encodeImageEmbeds(runtime, await pixels(ctx, spec, task.inputs["first"]!, "image"));
      await writeOnce(ctx, task.outputs["embeds"]!, { image_embeds: embeds });
      return;
    }
    case "vae_encode": {
      const g = new TorchGenerator(BigInt(task.rng!.seed));
      g.skip(task.rng!.offset);
      const sf = runtime.bundle.manifest.vae.scaling_factor;
      const out: Tensors = { image_latents: sampleLatents(await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["first"]!, "image")), g, sf) };
      if (task.inputs["last"] !== undefined) {
        out["last_image_latents"] = sampleLatents(await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["last"], "end image")), g, sf);
      }
      await writeOnce(ctx, task.outputs["latents"]!, out);
      return;
    }
    case "denoise": {
      const k = task.section!;
      const plan = sectionPlanFor(params, runtime.bundle.manifest);
      const section = plan.sections[k]!;
      const text = await readTensors(ctx, task.inputs["prompt"]!);
      const negative = task.inputs["negative"] !== undefined ? await readTensors(ctx, task.inputs["negative"]) : null;
      const image = await readTensors(ctx, task.inputs["imageEmbeds"]!);
      const latents = await readTensors(ctx, task.inputs["imageLatents"]!);
      const imageLatents = need(latents.tensors, "image_latents", task.inputs["imageLatents"]!);
      const lastLatents = (latents.tensors.get("last_image_latents") as F32 | undefined) ?? null;
      let history: History;
      if (k === 0) history = initialHistory(plan, imageLatents);
      else {
        const h = await readTensors(ctx, task.inputs["history"]!);
        history = { latents: need(h.tensors, "history", task.inputs["history"]!), generated: Number(h.metadata["generated"]) };
      }
      const context = sectionInputs(plan, section, history, imageLatents, lastLatents);
      const [, channels, , h, w] = imageLatents.shape as [number, number, number, number, number];
      const g = new TorchGenerator(BigInt(task.rng!.seed));
      g.skip(task.rng!.offset);
      const noise = g.randn([1, channels, plan.latentWindowSize, h, w]);
      const patch = runtime.bundle.manifest.transformer.patch_size;
      const schedule = flowMatchSchedule(runtime.bundle.manifest.scheduler, params.steps, imageSeqLen(plan.latentWindowSize, h, w, patch));
      const result = await denoiseSection(
        runtime,
        {
          noise,
          prompt: conditioning(text.tensors, task.inputs["prompt"]!),
          ...(negative !== null ? { negative: conditioning(negative.tensors, task.inputs["negative"]!) } : {}),
          trueCfgScale: params.trueCfgScale,
          imageEmbeds: need(image.tensors, "image_embeds", task.inputs["imageEmbeds"]!),
          context,
          guidanceScale: params.guidanceScale,
          schedule,
        },
        { ...(observer.onStep !== undefined ? { onStep: observer.onStep } : {}), ...(observer.signal !== undefined ? { signal: observer.signal } : {}) },
      );
      const appended = appendSection(plan, section, history, result, imageLatents);
      // The section's latents live on in the history (what the next section and the decode read).
      await writeOnce(ctx, task.outputs["history"]!, { history: appended.history.latents, decode_latents: appended.decodeLatents }, { generated: String(appended.history.generated) });
      return;
    }
    case "decode": {
      const h = await readTensors(ctx, task.inputs["history"]!);
      const vaeLatents = toVaeLatents(need(h.tensors, "decode_latents", task.inputs["history"]!), runtime.bundle.manifest.vae.scaling_factor);
      const video = await decodeVideo(runtime, vaeLatents);
      await writeOnce(ctx, task.outputs["video"]!, { video });
      if (task.outputs["preview"] !== undefined) await writeVideoObject(store, task.outputs["preview"], videoToUint8Frames(video, video.shape[2]!), params);
      return;
    }
    case "mux": {
      await writeVideoObject(store, task.outputs["video"]!, await assembleFrames(ctx, task, spec), params);
      return;
    }
  }
}
