/**
 * denoise stage: runs the transformer over all sampling steps of one FramePack section, with
 * distilled guidance and optional true CFG, exactly as diffusers' denoising loop.
 */
import { Tensor, type F32, type I64 } from "../../shared/tensor/tensor.js";
import type { FlowMatchSchedule } from "../../shared/sampler/flow-match.js";
import { eulerStep } from "../../shared/sampler/flow-match.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { UniPCOptions } from "../../shared/job/section-sampling.js";
import { scalar, transformerFeeds } from "./transformer-feeds.js";
import { denoiseSectionUniPC } from "./denoise-unipc.js";
import { transformerCall, type StepCacheOptions } from "./step-cache.js";

export interface TextConditioning {
  embeds: F32;
  mask: F32;
  pooled: F32;
}

export interface SectionContext {
  latentsClean: F32;
  history2x: F32;
  history4x: F32;
  indicesLatents: I64;
  indicesClean: I64;
  indices2x: I64;
  indices4x: I64;
}

export interface DenoiseInput {
  /** Initial latents of the section: [1, C, window, h, w] */
  noise: F32;
  prompt: TextConditioning;
  /** Present only with true CFG (true_cfg_scale > 1 and a negative prompt). */
  negative?: TextConditioning;
  trueCfgScale: number;
  imageEmbeds: F32;
  context: SectionContext;
  /** guidance_scale; the transformer receives guidance_scale * 1000. */
  guidanceScale: number;
  schedule: FlowMatchSchedule;
  /** lllyasviel's sampler (--sampler unipc) instead of FlowMatch Euler; see denoise-unipc.ts. */
  unipc?: UniPCOptions;
  /**
   * --cache teacache | magcache: lllyasviel's TeaCache (teacache.ts) or MagCache (magcache.ts)
   * over the step-cache graphs (step-cache.ts).
   */
  stepCache?: StepCacheOptions;
}

export interface DenoiseObserver {
  /** Called after each step with the 1-based step number. */
  onStep?(step: number, total: number): void;
  /** Step 0's transformer inputs and its first (positive prompt) output, for parity checks. */
  onFirstStep?(inputs: Record<string, Tensor>, output: F32): void;
  /** With a step cache, after the section: per transformer call, 1 if the blocks ran, 0 if skipped. */
  onCache?(computed: readonly number[]): void;
  /** Lets a caller stop between steps (cancellation). */
  signal?: AbortSignal;
  /** session.run's own time of each transformer call (single graph only). */
  onRun?(runMs: number): void;
}

/** neg + scale * (pos - neg), rounding each float32 operation like torch. */
function trueCfg(pos: F32, neg: F32, scale: number): F32 {
  const out = new Float32Array(pos.numel);
  const s = Math.fround(scale);
  for (let i = 0; i < out.length; i++) {
    const diff = Math.fround(pos.data[i]! - neg.data[i]!);
    out[i] = Math.fround(neg.data[i]! + Math.fround(s * diff));
  }
  return new Tensor("float32", pos.shape, out);
}

/** `runtime` needs only `model()`: a ModelRuntime, or a benchmark holding one loaded session. */
export async function denoiseSection(
  runtime: Pick<ModelRuntime, "model">,
  input: DenoiseInput,
  observer: DenoiseObserver = {},
): Promise<F32> {
  // --sampler unipc: lllyasviel's sampler, its own loop (denoise-unipc.ts).
  if (input.unipc !== undefined) return denoiseSectionUniPC(runtime, input, input.unipc, observer);
  const { schedule } = input;
  const guidance = scalar(Math.fround(Math.fround(input.guidanceScale) * 1000));
  const steps = schedule.timesteps.length;
  const { call, cache, release } = await transformerCall(runtime, steps, input.stepCache, observer.onRun);
  let latents = input.noise;
  try {
    for (let i = 0; i < steps; i++) {
      observer.signal?.throwIfAborted();
      const timestep = scalar(schedule.timesteps[i]!);
      const withText = (t: TextConditioning) => transformerFeeds(input, latents, timestep, guidance, t);
      const feeds = withText(input.prompt);
      let noisePred = await call(feeds);
      if (i === 0) observer.onFirstStep?.(feeds, noisePred);
      if (input.negative !== undefined) {
        const negPred = await call(withText(input.negative));
        noisePred = trueCfg(noisePred, negPred, input.trueCfgScale);
      }
      latents = eulerStep(latents, noisePred, schedule.sigmas[i]!, schedule.sigmas[i + 1]!);
      observer.onStep?.(i + 1, steps);
    }
  } finally {
    release();
  }
  if (cache !== undefined) observer.onCache?.(cache.computed);
  return latents;
}
