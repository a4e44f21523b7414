/** The section plan of a render: its parameters read against the bundle's FramePack settings. */
import type { BundleManifest } from "../bundle/manifest.js";
import { planSections, type SectionPlan } from "../framepack/plan.js";
import type { RenderParams } from "./render-params.js";

export function sectionPlanFor(
  params: Pick<RenderParams, "samplingType" | "numFrames" | "latentWindowSize" | "hasEndImage">,
  manifest: BundleManifest,
): SectionPlan {
  return planSections({
    samplingType: params.samplingType,
    numFrames: params.numFrames,
    latentWindowSize: params.latentWindowSize,
    hasEndImage: params.hasEndImage,
    historySizes: manifest.framepack.history_sizes[params.samplingType],
    temporalCompression: manifest.vae.temporal_compression_ratio,
  });
}
