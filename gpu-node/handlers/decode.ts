/**
 * decode: one section's latents to video, and the section's MP4 preview. A preview is for
 * watching the job grow (the dashboard shows it small): H.264 at most PREVIEW_SIDE pixels a side,
 * whatever the job's own format, so that a lossless or WebM job does not pay its final encode on
 * every section (a lossless 640x640 preview took seconds of the decode task on an H200 node).
 */
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { previewFramesAsync } from "../../shared/framepack/preview-frames.js";
import { decodeSection } from "../stages/section-step.js";
import { need, readTensors, timed, writeOnce, writeVideoObject, type StageHandler } from "./task-io.js";

const PREVIEW_SIDE = 320;
export const PREVIEW = { crf: 28, lossless: false, format: "mp4", maxSide: PREVIEW_SIDE, preset: "veryfast" } as const;

export const decodeHandler: StageHandler = async (ctx, task, spec, observer) => {
  const params = renderParamsOf(spec);
  const plan = sectionPlanFor(params, ctx.runtime.bundle.manifest);
  const section = plan.sections[task.section!]!;
  const h = await timed(observer, "read", () => readTensors(ctx, task.inputs["history"]!));
  // "vae" is the whole decode; "vae_run" the decoder's own runs in it (onnxruntime's session.run
  // summed over the tiles): the difference is host work and waiting for a shared session.
  const stats = { runMs: 0 };
  const video = await timed(observer, "vae", () =>
    decodeSection(ctx.runtime, plan, section, need(h.tensors, "decode_latents", task.inputs["history"]!), params, {
      stats,
    }),
  );
  observer.onPhase?.("vae_run", stats.runMs);
  // The store and the preview run at once: the next task (the mux, after the last section) waits
  // for both, and the store is I/O while the preview is conversion and ffmpeg.
  const previewKey = task.outputs["preview"];
  await Promise.all([
    timed(observer, "write", () => writeOnce(ctx, task.outputs["video"]!, { video })),
    previewKey === undefined
      ? undefined
      : timed(observer, "preview", async () =>
          writeVideoObject(
            ctx.store,
            previewKey,
            await previewFramesAsync(video, video.shape[2]!, PREVIEW_SIDE, params.sampler),
            {
              ...PREVIEW,
              fps: params.fps,
            },
          ),
        ),
  ]);
};
