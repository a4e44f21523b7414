/** decode: one section's latents to video, and the section's MP4 preview. */
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { frameConverterFor } from "../../shared/framepack/frames.js";
import { decodeSection } from "../stages/section-step.js";
import { need, readTensors, writeOnce, writeVideoObject, type StageHandler } from "./task-io.js";

export const decodeHandler: StageHandler = async (ctx, task, spec) => {
  const params = renderParamsOf(spec);
  const section = sectionPlanFor(params, ctx.runtime.bundle.manifest).sections[task.section!]!;
  const h = await readTensors(ctx, task.inputs["history"]!);
  const video = await decodeSection(ctx.runtime, section, need(h.tensors, "decode_latents", task.inputs["history"]!));
  await writeOnce(ctx, task.outputs["video"]!, { video });
  if (task.outputs["preview"] !== undefined)
    await writeVideoObject(
      ctx.store,
      task.outputs["preview"],
      frameConverterFor(params.sampler)(video, video.shape[2]!),
      params,
    );
};
