/**
 * vae_encode: the start image's latents (or, extending a video, the video's last latents), then the
 * end image's, sampled from the VAE posterior with the job's generator in that order.
 */
import { FarmError } from "../../shared/errors.js";
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { encodeImagePosterior, sampleLatents } from "../stages/encode-image.js";
import { encodeVideoPosterior } from "../stages/encode-video.js";
import { generatorOf, pixels, writeOnce, type StageHandler, type Tensors } from "./task-io.js";

export const vaeEncodeHandler: StageHandler = async (ctx, task, spec) => {
  const { runtime } = ctx;
  const g = generatorOf(task);
  const sf = runtime.bundle.manifest.vae.scaling_factor;
  const out: Tensors = {};
  const videoKey = task.inputs["video"];
  if (videoKey !== undefined) {
    const params = renderParamsOf(spec);
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
  await writeOnce(ctx, task.outputs["latents"]!, out);
};
