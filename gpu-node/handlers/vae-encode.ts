/**
 * vae_encode: the start image's latents (or, extending a video, the video's last latents), the end
 * image's, then the keyframes', sampled from the VAE posterior with the job's generator in that
 * order (keyframes in plan order: shared/job/keyframes.ts).
 */
import { FarmError } from "../../shared/errors.js";
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { keyframeSchedule } from "../../shared/job/keyframes.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { encodeImagePosterior, sampleKeyframeLatents, sampleLatents } from "../stages/encode-image.js";
import { encodeVideoPosterior } from "../stages/encode-video.js";
import { generatorOf, pixels, writeOnce, type StageHandler, type Tensors } from "./task-io.js";

export const vaeEncodeHandler: StageHandler = async (ctx, task, spec) => {
  const { runtime } = ctx;
  const g = generatorOf(task);
  const sf = runtime.bundle.manifest.vae.scaling_factor;
  const params = renderParamsOf(spec);
  const out: Tensors = {};
  const videoKey = task.inputs["video"];
  if (videoKey !== undefined) {
    const plan = sectionPlanFor(params, runtime.bundle.manifest).video;
    if (params.video === null || plan === null)
      throw new FarmError("INTERNAL", `task ${task.id} reads a video but its job extends none`);
    const posterior = await encodeVideoPosterior(runtime, await ctx.store.get(videoKey), params.video, plan, spec);
    out["video_latents"] = sampleLatents(posterior, g, sf);
  } else {
    out["image_latents"] = sampleLatents(
      await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["first"]!, "image")),
      g,
      sf,
    );
  }
  if (task.inputs["last"] !== undefined) {
    out["last_image_latents"] = sampleLatents(
      await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["last"], "end image")),
      g,
      sf,
    );
  }
  if (params.keyframeTimes.length > 0) {
    const { drawOrder } = keyframeSchedule(
      sectionPlanFor(params, runtime.bundle.manifest),
      params.keyframeTimes,
      params.fps,
    );
    const latents = await sampleKeyframeLatents(
      runtime,
      (i) => {
        const key = task.inputs[`keyframe${i}`];
        if (key === undefined) throw new FarmError("INTERNAL", `task ${task.id} names no image for keyframe ${i + 1}`);
        return pixels(ctx, spec, key, `keyframe ${i + 1}`);
      },
      drawOrder,
      g,
      sf,
    );
    latents.forEach((l, i) => (out[`keyframe_latents.${i}`] = l));
  }
  await writeOnce(ctx, task.outputs["latents"]!, out);
};
