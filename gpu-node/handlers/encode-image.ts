/** encode_image: the start image's SigLIP embeddings. */
import { encodeImageEmbeds } from "../stages/encode-image.js";
import { pixels, writeOnce, type StageHandler } from "./task-io.js";

export const encodeImageHandler: StageHandler = async (ctx, task, spec) => {
  // diffusers conditions the transformer on the start image's embeddings only.
  const { embeds } = await encodeImageEmbeds(ctx.runtime, await pixels(ctx, spec, task.inputs["first"]!, "image"));
  await writeOnce(ctx, task.outputs["embeds"]!, { image_embeds: embeds });
};
