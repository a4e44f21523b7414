/**
 * The FramePack section step, written once: one section's fresh noise, its sampling schedule, the
 * denoising loop and the history append, then the section's decode, and the decoded sections
 * joined into the video. The in-process render (gpu-node/stages/render-job.ts) runs it section after
 * section in one process; the farm's denoise, decode and mux handlers (gpu-node/handlers/) run one
 * call each, with the generator positioned from the plan. A probe sees every intermediate under the
 * reference's names (`section<k>.noise`, `decode<k>.out`, ...): check-reference compares them.
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { appendSection, sectionInputs, type History } from "../../shared/framepack/history.js";
import { latentsDecodedAgain, type Section, type SectionPlan } from "../../shared/framepack/plan.js";
import { VideoAccumulator } from "../../shared/framepack/video-accumulator.js";
import {
  softAppendedFrames,
  softAppendedFramesWhenReady,
  streamable,
  type FramesReady,
} from "../../shared/framepack/video-stream.js";
import { planeConverterFor, trimFrameCount } from "../../shared/framepack/frames.js";
import { toVideoPixelTensor } from "../../shared/image/decode.js";
import { FarmError } from "../../shared/errors.js";
import type { RenderParams } from "../../shared/job/render-params.js";
import { computedProbeName, stepCacheOf } from "./step-cache.js";
import { sectionSampling } from "../../shared/job/section-sampling.js";
import { denoiseSection, type TextConditioning } from "./denoise-section.js";
import { decodeVideo, toVaeLatents, type DecodeOptions, type DecodeStats } from "./decode-latents.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";

/** Sees intermediate tensors under the reference's key names. */
export type Probe = (name: string, tensor: Tensor) => void;

export interface SectionStepInput {
  plan: SectionPlan;
  section: Section;
  /** The history after the previous section (initialHistory for the first). */
  history: History;
  imageLatents: F32;
  lastImageLatents: F32 | null;
  /** The latent of the keyframe in force in this section (shared/job/keyframes.ts), or null. */
  keyframeLatents?: F32 | null;
  /** Positioned at this section's noise: the section draws its noise from it. */
  generator: TorchGenerator;
  /** This section's prompt (prompts may change over time: timed-prompts.ts sectionEmbeddings). */
  prompt: TextConditioning;
  /** Present only with true CFG. */
  negative?: TextConditioning;
  imageEmbeds: F32;
  params: Pick<RenderParams, "steps" | "guidanceScale" | "trueCfgScale"> &
    Partial<
      Pick<
        RenderParams,
        "sampler" | "unipcVariant" | "cfgRescale" | "cache" | "cacheThreshold" | "magcacheK" | "magcacheRetention"
      >
    >;
}

export interface SectionStepObserver {
  /** After each denoising step, 1-based. */
  onStep?(step: number, steps: number): void;
  probe?: Probe;
  signal?: AbortSignal;
  /** With --cache teacache or magcache, after the section: per transformer call, 1 if its blocks ran, 0 if skipped. */
  onCache?(computed: readonly number[]): void;
  /** session.run's own time of each transformer call (single graph only). */
  onRun?(runMs: number): void;
}

export interface SectionStepResult {
  /** The history with this section's latents in it (what the next section reads). */
  history: History;
  /** The latents this section's decode takes. */
  decodeLatents: F32;
}

/** Denoises one section and appends it to the history. */
export async function runSectionStep(
  runtime: ModelRuntime,
  input: SectionStepInput,
  observer: SectionStepObserver = {},
): Promise<SectionStepResult> {
  const { plan, section, history, imageLatents } = input;
  const k = section.index;
  const probe = observer.probe;
  const manifest = runtime.bundle.manifest;
  const context = sectionInputs(
    plan,
    section,
    history,
    imageLatents,
    input.lastImageLatents,
    input.keyframeLatents ?? null,
  );
  const [, channels, , h, w] = imageLatents.shape as [number, number, number, number, number];
  const noise = input.generator.randn([1, channels, plan.latentWindowSize, h, w]);
  probe?.(`section${k}.noise`, noise);
  // The sampler: diffusers' FlowMatch Euler, or lllyasviel's flux-shifted UniPC (--sampler unipc).
  const { schedule, unipc } = sectionSampling(input.params, manifest, {
    frames: plan.latentWindowSize,
    height: h,
    width: w,
  });
  probe?.(`section${k}.sigmas`, new Tensor("float32", [schedule.sigmas.length], schedule.sigmas));
  probe?.(`section${k}.timesteps`, new Tensor("float32", [schedule.timesteps.length], schedule.timesteps));

  const stepCache = stepCacheOf(input.params);
  const latents = await denoiseSection(
    runtime,
    {
      noise,
      prompt: input.prompt,
      ...(input.negative !== undefined ? { negative: input.negative } : {}),
      trueCfgScale: input.params.trueCfgScale,
      imageEmbeds: input.imageEmbeds,
      context,
      guidanceScale: input.params.guidanceScale,
      schedule,
      ...(unipc !== undefined ? { unipc } : {}),
      ...(stepCache !== undefined ? { stepCache } : {}),
    },
    {
      ...(observer.onStep !== undefined ? { onStep: observer.onStep } : {}),
      ...(probe !== undefined
        ? {
            onFirstStep: (feeds: Record<string, Tensor>, out: F32) => {
              for (const [name, t] of Object.entries(feeds)) probe(`section${k}.transformer_in.${name}`, t);
              probe(`section${k}.step0.transformer_out`, out);
            },
          }
        : {}),
      ...(observer.signal !== undefined ? { signal: observer.signal } : {}),
      ...(observer.onRun !== undefined ? { onRun: observer.onRun } : {}),
      onCache: (computed: readonly number[]) => {
        if (stepCache !== undefined)
          probe?.(
            `section${k}.${computedProbeName(stepCache.kind)}`,
            new Tensor("float32", [computed.length], Float32Array.from(computed)),
          );
        observer.onCache?.(computed);
      },
    },
  );
  probe?.(`section${k}.latents`, latents);
  return appendSection(plan, section, history, latents, imageLatents);
}

/**
 * Decodes one section's latents to video [1, 3, T, H, W] in [-1, 1], spatially tiled exactly when
 * the job asks (params.vaeTiling): the farm's decode handler and the in-process render both come
 * here, so a job's frames are the same on every node.
 */
export async function decodeSection(
  runtime: ModelRuntime,
  plan: SectionPlan,
  section: Section,
  decodeLatents: F32,
  params: Pick<RenderParams, "vaeTiling">,
  extra: Pick<DecodeOptions, "stats" | "onFrames" | "into"> & { probe?: Probe } = {},
): Promise<F32> {
  const { probe, stats, onFrames, into } = extra;
  const vaeLatents = toVaeLatents(decodeLatents, runtime.bundle.manifest.vae.scaling_factor);
  probe?.(`decode${section.index}.in`, vaeLatents);
  // The next section's decode takes some of these latents again: their tiles are kept for it.
  const keep = latentsDecodedAgain(plan, section.index);
  const video = await decodeVideo(runtime, vaeLatents, {
    spatialTiling: params.vaeTiling,
    ...(stats !== undefined ? { stats } : {}),
    ...(keep !== null ? { keep } : {}),
    ...(onFrames !== undefined ? { onFrames } : {}),
    ...(into !== undefined ? { into } : {}),
  });
  probe?.(`decode${section.index}.out`, video);
  return video;
}

/** Joins decoded sections, in plan order, into the finished video's frames. */
export class SectionVideo {
  private readonly video: VideoAccumulator;
  private decodedFrames = 0;

  constructor(
    private readonly plan: SectionPlan,
    samplingType: RenderParams["samplingType"],
    private readonly temporalCompression: number,
    /** The sampler's frame conversion: diffusers' postprocessing, or the demo's (unipc). */
    sampler?: RenderParams["sampler"],
  ) {
    this.video = new VideoAccumulator(samplingType, plan.overlapFrames, planeConverterFor(sampler));
  }

  add(decoded: F32): void {
    this.count(decoded);
    this.video.add(decoded);
  }

  /** add(), yielding to the event loop as it goes (a farm node's mux). */
  async addAsync(decoded: F32): Promise<void> {
    this.count(decoded);
    await this.video.addAsync(decoded);
  }

  private count(decoded: F32): void {
    this.decodedFrames += decoded.shape[2]! - (this.decodedFrames === 0 ? 0 : this.plan.overlapFrames);
  }

  /** uint8 [T, H, W, 3]. */
  finish(): Tensor<"uint8"> {
    return this.video.finish(trimFrameCount(this.decodedFrames, this.temporalCompression));
  }
}

/** A video as a sequence of uint8 RGB frames [H, W, 3], produced as they are consumed. */
export interface FrameStream {
  width: number;
  height: number;
  count: number;
  /** Asynchronous when the frames begin with an input video's (decoded as they are asked for). */
  frames: Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

/**
 * The decoded sections (plan order) joined into the finished video's frames, in video order, as
 * SectionVideo.finish() gives them: streamed (softAppendedFrames) when no frame is in two
 * cross-fades, else accumulated first and then handed out frame by frame.
 */
export function finishedFrames(
  plan: SectionPlan,
  params: Pick<RenderParams, "samplingType" | "sampler">,
  temporalCompression: number,
  sections: readonly F32[],
  /** Extending a video: its frames at the render size, in order (videoFramesAtSize). */
  input?: AsyncIterable<Uint8Array>,
  /** Sections still being decoded: when their frames are final (else every section is whole). */
  ready?: FramesReady,
): FrameStream {
  const first = sections[0];
  if (first === undefined) throw new RangeError("no sections were decoded");
  if (plan.video !== null) {
    if (input === undefined) throw new RangeError("a plan extending a video needs the video's frames");
    return extendedFrames(plan, params, sections, input, ready);
  }
  const counts = sections.map((s) => s.shape[2]!);
  const decoded = counts.reduce((n, t, i) => n + t - (i === 0 ? 0 : plan.overlapFrames), 0);
  const count = trimFrameCount(decoded, temporalCompression);
  const [height, width] = [first.shape[3]!, first.shape[4]!];
  const toUint8 = planeConverterFor(params.sampler);
  if (streamable(counts, plan.overlapFrames))
    return {
      width,
      height,
      count,
      frames:
        ready === undefined
          ? {
              [Symbol.iterator]: () =>
                softAppendedFrames(sections, params.samplingType, plan.overlapFrames, toUint8, count),
            }
          : {
              [Symbol.asyncIterator]: () =>
                softAppendedFramesWhenReady(sections, params.samplingType, plan.overlapFrames, toUint8, ready, count),
            },
    };
  const frameBytes = width * height * 3;
  const accumulated = (): Tensor<"uint8"> => {
    const video = new SectionVideo(plan, params.samplingType, temporalCompression, params.sampler);
    for (const s of sections) video.add(s);
    return video.finish();
  };
  const framesOf = function* (all: Tensor<"uint8">): Generator<Uint8Array> {
    for (let i = 0; i < all.shape[0]!; i++) yield all.data.subarray(i * frameBytes, (i + 1) * frameBytes);
  };
  if (ready === undefined) {
    const all = accumulated();
    return { width, height, count: all.shape[0]!, frames: { [Symbol.iterator]: () => framesOf(all) } };
  }
  // Not streamable (a frame in two cross-fades): every section whole first.
  return {
    width,
    height,
    count,
    frames: {
      async *[Symbol.asyncIterator]() {
        for (const [i, s] of sections.entries()) await ready(i, s.shape[2]!);
        yield* framesOf(accumulated());
      },
    },
  };
}

/**
 * Extending a video: its frames as they are, then the generated part, the last joinFrames of the
 * input cross-faded into the first of the generated part (which decodes the input's last window
 * again) as soft-append joins sections. Inverted sections come in generation order, from the end.
 */
function extendedFrames(
  plan: SectionPlan,
  params: Pick<RenderParams, "samplingType" | "sampler">,
  sections: readonly F32[],
  input: AsyncIterable<Uint8Array>,
  ready?: FramesReady,
): FrameStream {
  const { inputFrames, joinFrames } = plan.video!;
  const [height, width] = [sections[0]!.shape[3]!, sections[0]!.shape[4]!];
  const inverted = params.samplingType === "inverted_anti_drifting";
  const inVideoOrder = inverted ? [...sections].reverse() : [...sections];
  const counts = [joinFrames, ...inVideoOrder.map((s) => s.shape[2]!)];
  if (!streamable(counts, joinFrames))
    throw new FarmError("INTERNAL", `sections of ${counts.join(", ")} frames cannot join the video over ${joinFrames}`);
  const toUint8 = planeConverterFor(params.sampler);
  return {
    width,
    height,
    count: plan.outputFrames,
    frames: {
      async *[Symbol.asyncIterator]() {
        const tail: Uint8Array[] = [];
        let read = 0;
        for await (const frame of input) {
          if (read++ < inputFrames - joinFrames) yield frame;
          else tail.push(frame);
        }
        if (read !== inputFrames)
          throw new FarmError(
            "DATA_LOSS",
            `the input video gave ${read} frames, the job was planned for ${inputFrames}`,
          );
        const lead = toVideoPixelTensor(tail, height, width);
        if (ready === undefined) {
          yield* softAppendedFrames([lead, ...inVideoOrder], "vanilla", joinFrames, toUint8);
          return;
        }
        // Clip j of [lead, ...inVideoOrder] is the lead (whole) or a section, by generation order.
        const n = sections.length;
        yield* softAppendedFramesWhenReady([lead, ...inVideoOrder], "vanilla", joinFrames, toUint8, (j, frames) =>
          j === 0 ? undefined : ready(inverted ? n - j : j - 1, frames),
        );
      },
    },
  };
}
