/**
 * A section's schedule and sampler from the render parameters: diffusers' FlowMatch Euler with
 * the bundle's scheduler, or lllyasviel's flux-shifted UniPC (--sampler unipc). One function, so
 * the embedded renderer and the denoise stage cannot drift apart.
 */
import type { BundleManifest } from "../bundle/manifest.js";
import { flowMatchSchedule, imageSeqLen, type FlowMatchSchedule } from "../sampler/flow-match.js";
import { fluxSeqLength, fluxSigmas } from "../sampler/time-shift.js";
import type { UniPCVariant } from "../sampler/unipc.js";
import type { RenderParams } from "./render-params.js";

export interface UniPCOptions {
  variant: UniPCVariant;
  cfgRescale: number;
}

export interface SectionSampling {
  /** UniPC: steps + 1 flux sigmas and timesteps = sigma * 1000 (what the transformer is fed). */
  schedule: FlowMatchSchedule;
  /** Present with --sampler unipc. */
  unipc?: UniPCOptions;
}

type SamplingParams = Pick<RenderParams, "steps"> &
  Partial<Pick<RenderParams, "sampler" | "unipcVariant" | "cfgRescale">>;

/** `latent`: the section's window frames and the latent height and width. */
export function sectionSampling(
  params: SamplingParams,
  manifest: BundleManifest,
  latent: { frames: number; height: number; width: number },
): SectionSampling {
  if (params.sampler === "unipc") {
    const sigmas = fluxSigmas(params.steps, fluxSeqLength(latent.frames, latent.height, latent.width));
    const timesteps = sigmas.slice(0, params.steps).map((s) => Math.fround(s * 1000));
    return {
      schedule: { sigmas, timesteps },
      unipc: { variant: params.unipcVariant ?? "bh1", cfgRescale: params.cfgRescale ?? 0 },
    };
  }
  const seqLen = imageSeqLen(latent.frames, latent.height, latent.width, manifest.transformer.patch_size);
  return { schedule: flowMatchSchedule(manifest.scheduler, params.steps, seqLen) };
}
