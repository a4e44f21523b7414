/** The section plan of a render: its parameters read against the bundle's FramePack settings. */
import type { BundleManifest } from "../bundle/manifest.js";
import { planSections, type SectionPlan } from "../framepack/plan.js";
import type { RenderParams } from "./render-params.js";
import { promptSchedule, type PromptScheduleParams } from "./timed-prompts.js";
import { keyframeSections } from "./keyframes.js";

type PlanParams = Pick<RenderParams, "samplingType" | "numFrames" | "latentWindowSize" | "hasEndImage"> &
  Partial<Pick<RenderParams, "sampler" | "video">> &
  Partial<PromptScheduleParams> &
  Partial<Pick<RenderParams, "keyframeTimes">>;

/** Also checks that section prompts and keyframes, if any, fit the plan (INVALID_ARGUMENT otherwise). */
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
  if (params.keyframeTimes !== undefined && params.keyframeTimes.length > 0) {
    if (params.fps === undefined) throw new RangeError("keyframes are placed by time: the plan needs the fps");
    keyframeSections(plan, params.keyframeTimes, params.fps);
  }
  return plan;
}
