/** mux: every section's decoded video joined in plan order, encoded as the job's MP4. */
import type { Tensor } from "../../shared/tensor/tensor.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import { renderParamsOf, type JobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { SectionVideo } from "../stages/section-step.js";
import { need, readTensors, writeVideoObject, type StageHandler, type WorkerContext } from "./task-io.js";

/** The mux task's frames: every section's decoded video soft-appended in plan order. */
export async function assembleFrames(ctx: WorkerContext, task: StageTask, spec: JobSpec): Promise<Tensor<"uint8">> {
  const manifest = ctx.runtime.bundle.manifest;
  const params = renderParamsOf(spec);
  const plan = sectionPlanFor(params, manifest);
  const video = new SectionVideo(plan, params.samplingType, manifest.vae.temporal_compression_ratio, params.sampler);
  for (const s of plan.sections) {
    const key = task.inputs[`section${s.index}`]!;
    video.add(need((await readTensors(ctx, key)).tensors, "video", key));
  }
  return video.finish();
}

export const muxHandler: StageHandler = async (ctx, task, spec) => {
  await writeVideoObject(
    ctx.store,
    task.outputs["video"]!,
    await assembleFrames(ctx, task, spec),
    renderParamsOf(spec),
  );
};
