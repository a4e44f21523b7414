/**
 * denoise stage, lllyasviel's sampler (--sampler unipc): one section sampled as FramePack's
 * sample_hunyuan does it (diffusers_helper/pipelines/k_diffusion_hunyuan.py): UniPC over flux
 * sigmas, the model wrapped by fm_wrapper (timestep = sigma * 1000, true CFG whenever cfg != 1,
 * CFG rescale, velocity to denoised x0). Returns the last denoised prediction, as the demo does.
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { cfgCombine, flowToDenoised, rescaleNoiseCfg, sampleUniPC } from "../../shared/sampler/unipc.js";
import type { UniPCOptions } from "../../shared/job/section-sampling.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { DenoiseInput, DenoiseObserver, TextConditioning } from "./denoise-section.js";
import { scalar, transformerFeeds } from "./transformer-feeds.js";
import { transformerCall } from "./step-cache.js";

export async function denoiseSectionUniPC(
  runtime: Pick<ModelRuntime, "model">,
  input: DenoiseInput,
  options: UniPCOptions,
  observer: DenoiseObserver = {},
): Promise<F32> {
  const { schedule } = input;
  // torch.tensor([distilled_guidance_scale * 1000.0]): the product in float64, then float32.
  const guidance = scalar(Math.fround(input.guidanceScale * 1000));
  const steps = schedule.sigmas.length - 1;
  const { call, cache, release } = await transformerCall(runtime, steps, input.stepCache, observer.onRun);
  const denoised = async (x: F32, sigma: number, step: number): Promise<F32> => {
    const timestep = scalar(Math.fround(sigma * 1000));
    const feeds = (t: TextConditioning) => transformerFeeds(input, x, timestep, guidance, t);
    const posFeeds = feeds(input.prompt);
    const pos = await call(posFeeds);
    if (step === 0) observer.onFirstStep?.(posFeeds, pos);
    let pred = pos;
    if (input.negative !== undefined) pred = cfgCombine(pos, await call(feeds(input.negative)), input.trueCfgScale);
    return flowToDenoised(x, rescaleNoiseCfg(pred, pos, options.cfgRescale), sigma);
  };
  let latents: F32;
  try {
    latents = await sampleUniPC(denoised, input.noise, schedule.sigmas, options.variant, {
      onStep: (i) => observer.onStep?.(i + 1, steps),
      ...(observer.signal !== undefined ? { signal: observer.signal } : {}),
    });
  } finally {
    release();
  }
  if (cache !== undefined) observer.onCache?.(cache.computed);
  return latents;
}
