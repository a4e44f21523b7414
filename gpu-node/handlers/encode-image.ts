/**
 * encode_image: the start image's SigLIP embeddings. Extending a video: its first encoded frame's,
 * or with an end image the end image's (FramePack-Studio's End Frame Influence at its default 1.0).
 */
import { FarmError } from "../../shared/errors.js";
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { encodeImageEmbeds } from "../stages/encode-image.js";
import { encodeVideoEmbeds } from "../stages/encode-video.js";
import { pixels, writeOnce, type StageHandler } from "./task-io.js";

export const encodeImageHandler: StageHandler = async (ctx, task, spec) => {
  const { video, last, first } = task.inputs;
  let embeds;
  if (video !== undefined) {
    const params = renderParamsOf(spec);
    const plan = sectionPlanFor(params, ctx.runtime.bundle.manifest).video;
    if (params.video === null || plan === null)
      throw new FarmError("INTERNAL", `task ${task.id} reads a video but its job extends none`);
    ({ embeds } = await encodeVideoEmbeds(ctx.runtime, await ctx.store.get(video), params.video, plan, spec));
  } else {
    // diffusers conditions the transformer on the start image's embeddings only.
    const key = first ?? last!;
    ({ embeds } = await encodeImageEmbeds(
      ctx.runtime,
      await pixels(ctx, spec, key, first !== undefined ? "image" : "end image"),
    ));
  }
  await writeOnce(ctx, task.outputs["embeds"]!, { image_embeds: embeds });
};
