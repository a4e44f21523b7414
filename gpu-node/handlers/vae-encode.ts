/** vae_encode: the start (and end) image's latents, sampled from the VAE posterior with the job's generator. */
import { encodeImagePosterior, sampleLatents } from "../stages/encode-image.js";
import { generatorOf, pixels, writeOnce, type StageHandler, type Tensors } from "./task-io.js";

export const vaeEncodeHandler: StageHandler = async (ctx, task, spec) => {
  const { runtime } = ctx;
  const g = generatorOf(task);
  const sf = runtime.bundle.manifest.vae.scaling_factor;
  const out: Tensors = {
    image_latents: sampleLatents(
      await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["first"]!, "image")),
      g,
      sf,
    ),
  };
  if (task.inputs["last"] !== undefined) {
    out["last_image_latents"] = sampleLatents(
      await encodeImagePosterior(runtime, await pixels(ctx, spec, task.inputs["last"], "end image")),
      g,
      sf,
    );
  }
  await writeOnce(ctx, task.outputs["latents"]!, out);
};
