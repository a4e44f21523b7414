/**
 * What every stage handler shares: the node's context, reading a task's input objects (through the
 * node's cache), and writing its outputs under the task's keys. Outputs are written only if absent,
 * so when a task is retried after another attempt already committed, the committed objects stay as
 * they are (and are identical anyway: every input and generator position is fixed by the plan).
 */
import { FarmError, LostObjectError } from "../../shared/errors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { decodeTensorObjectAsync, encodeTensorObjectPartsAsync } from "../../shared/tensor/tensor-object.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { decodeImage, prepareImage } from "../../shared/image/decode.js";
import { tensorFrames, writeMp4Frames, type Mp4Options, type RawFrames } from "../../shared/video/mp4.js";
import { videoContentType } from "../../shared/video/codecs.js";
import type { CachedObject, TensorCache } from "../worker/tensor-cache.js";
import type { TextConditioning } from "../stages/denoise-section.js";
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
  /** Hears how long each phase of the task took (timed()), for the job's task log. */
  onPhase?(phase: string, ms: number): void;
}

/** Runs one phase of a task and tells the observer how long it took. */
export async function timed<T>(observer: TaskObserver, phase: string, work: () => Promise<T> | T): Promise<T> {
  const started = performance.now();
  try {
    return await work();
  } finally {
    observer.onPhase?.(phase, performance.now() - started);
  }
}

/** Runs one task of its stage kind: reads the task's inputs, writes its outputs. */
export type StageHandler = (
  ctx: WorkerContext,
  task: StageTask,
  spec: JobSpec,
  observer: TaskObserver,
) => Promise<void>;

export type Tensors = Record<string, Tensor>;

/**
 * A tensor object, verified. One that fails its checksum or is missing is a LostObjectError naming
 * the key: the node reports it as a lost input, and the coordinator recomputes it.
 */
export async function readTensors(ctx: WorkerContext, key: string): Promise<CachedObject> {
  const hit = ctx.cache?.get(key);
  if (hit !== undefined) return hit;
  let value: CachedObject;
  try {
    value = await decodeTensorObjectAsync(await ctx.store.get(key), key);
  } catch (err) {
    if (err instanceof FarmError && (err.status === "DATA_LOSS" || err.status === "NOT_FOUND"))
      throw new LostObjectError(err.status, key, err.message, { cause: err });
    throw err;
  }
  ctx.cache?.set(key, value);
  return value;
}

export function need<T extends Tensor = F32>(tensors: Map<string, Tensor>, name: string, key: string): T {
  const t = tensors.get(name);
  if (t === undefined) throw new FarmError("DATA_LOSS", `object ${key} lacks tensor ${name}`);
  return t as T;
}

export async function writeOnce(
  ctx: WorkerContext,
  key: string,
  tensors: Tensors,
  metadata: Record<string, string> = {},
): Promise<void> {
  const parts = await encodeTensorObjectPartsAsync(tensors, metadata);
  if (await ctx.store.putIfAbsent(key, parts, "application/octet-stream"))
    ctx.cache?.set(key, { tensors: new Map(Object.entries(tensors)), metadata });
}

export async function pixels(ctx: WorkerContext, spec: JobSpec, key: string, what: string): Promise<F32> {
  return prepareImage(await decodeImage(await ctx.store.get(key), undefined, what), spec.height, spec.width);
}

/**
 * A text object's conditioning. Prompts that change over time: the prompt object holds every
 * distinct prompt of the job (shared/job/timed-prompts.ts), the first under embeds/mask/pooled and
 * prompt i under embeds.i/mask.i/pooled.i.
 */
export function conditioning(t: Map<string, Tensor>, key: string, i = 0): TextConditioning {
  const s = i === 0 ? "" : `.${i}`;
  return { embeds: need(t, `embeds${s}`, key), mask: need(t, `mask${s}`, key), pooled: need(t, `pooled${s}`, key) };
}

/** Tensors of the i-th distinct prompt under the names that conditioning(t, key, i) reads. */
export const conditioningTensors = (c: TextConditioning, i = 0): Tensors => {
  const s = i === 0 ? "" : `.${i}`;
  return { [`embeds${s}`]: c.embeds, [`mask${s}`]: c.mask, [`pooled${s}`]: c.pooled };
};

/** The job's generator at the task's planned position. */
export function generatorOf(task: StageTask): TorchGenerator {
  if (task.rng === undefined) throw new FarmError("INTERNAL", `task ${task.id} carries no generator position`);
  const g = new TorchGenerator(BigInt(task.rng.seed));
  g.skip(task.rng.offset);
  return g;
}

/** Encodes frames as a video object (MP4, or WebM with options.format) under key, unless one is there already. */
export async function writeVideoObject(
  store: ObjectStore,
  key: string,
  frames: Tensor<"uint8"> | RawFrames,
  options: Mp4Options,
): Promise<void> {
  const format = options.format ?? "mp4";
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-mp4-"));
  try {
    const file = path.join(dir, `video.${format}`);
    await writeMp4Frames(frames instanceof Tensor ? tensorFrames(frames) : frames, file, options);
    await store.putIfAbsent(key, new Uint8Array(await readFile(file)), videoContentType(format));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
