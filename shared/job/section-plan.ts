/** The section plan of a render: its parameters read against the bundle's FramePack settings. */
import type { BundleManifest } from "../bundle/manifest.js";
import { planSections, type SectionPlan } from "../framepack/plan.js";
import type { RenderParams } from "./render-params.js";
import { promptSchedule, type PromptScheduleParams } from "./timed-prompts.js";

type PlanParams = Pick<RenderParams, "samplingType" | "numFrames" | "latentWindowSize" | "hasEndImage"> &
  Partial<Pick<RenderParams, "sampler" | "video">> &
  Partial<PromptScheduleParams>;

/** Also checks that section prompts, if any, fit the plan (INVALID_ARGUMENT otherwise). */
export function sectionPlanFor(params: PlanParams, manifest: BundleManifest): SectionPlan {
  const plan = planSections({
    samplingType: params.samplingType,
    numFrames: params.numFrames,
    latentWindowSize: params.latentWindowSize,
    hasEndImage: params.hasEndImage,
    historySizes: manifest.framepack.history_sizes[params.samplingType],
    temporalCompression: manifest.vae.temporal_compression_ratio,
    sectionCount: params.sampler === "unipc" ? "demo" : "diffusers",
    ...(params.video !== undefined && params.video !== null
      ? { video: { inputFrames: params.video.frames, contextFrames: params.video.contextFrames } }
      : {}),
  });
  if (params.sectionPrompts !== undefined && params.sectionPrompts !== null) {
    promptSchedule(
      { prompt: "", promptSegments: null, sectionPrompts: params.sectionPrompts, promptBlendSections: 0, fps: 30 },
      plan,
    );
  }
  return plan;
}
