/**
 * mux: every section's decoded video joined in plan order, encoded in the job's format (MP4 or
 * WebM) carrying the job's recipe in its comment tag and, when the job asks for them, every frame
 * as a PNG (one tar). Each object is written only if absent, so a retried mux leaves committed ones
 * as they are.
 */
import type { Tensor } from "../../shared/tensor/tensor.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import { renderParamsOf, type JobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { framesToPngTar } from "../../shared/video/frames-archive.js";
import { SectionVideo } from "../stages/section-step.js";
import {
  need,
  readTensors,
  timed,
  writeVideoObject,
  type StageHandler,
  type TaskObserver,
  type WorkerContext,
} from "./task-io.js";

/** The mux task's frames: every section's decoded video soft-appended in plan order. */
export async function assembleFrames(
  ctx: WorkerContext,
  task: StageTask,
  spec: JobSpec,
  observer: TaskObserver = {},
): Promise<Tensor<"uint8">> {
  const manifest = ctx.runtime.bundle.manifest;
  const params = renderParamsOf(spec);
  const plan = sectionPlanFor(params, manifest);
  const video = new SectionVideo(plan, params.samplingType, manifest.vae.temporal_compression_ratio, params.sampler);
  for (const s of plan.sections) {
    const key = task.inputs[`section${s.index}`]!;
    const read = await timed(observer, "read", () => readTensors(ctx, key));
    await timed(observer, "blend", () => video.addAsync(need(read.tensors, "video", key)));
  }
  return timed(observer, "blend", () => video.finish());
}

export const muxHandler: StageHandler = async (ctx, task, spec, observer) => {
  const frames = await assembleFrames(ctx, task, spec, observer);
  // The recipe (JSON), stored at submission, when the coordinator knew its bundle's digest.
  const recipeKey = task.inputs["recipe"];
  const comment = recipeKey !== undefined ? new TextDecoder().decode(await ctx.store.get(recipeKey)) : undefined;
  const framesKey = task.outputs["frames"];
  if (framesKey !== undefined && (await ctx.store.head(framesKey)) === null)
    await timed(observer, "frames", async () =>
      ctx.store.putIfAbsent(framesKey, await framesToPngTar(frames), "application/x-tar"),
    );
  const { fps, crf, lossless } = spec.params;
  await timed(observer, "encode", () =>
    writeVideoObject(ctx.store, task.outputs["video"]!, frames, {
      fps,
      crf,
      lossless,
      format: spec.output?.format ?? "mp4",
      ...(comment !== undefined ? { comment } : {}),
    }),
  );
};
