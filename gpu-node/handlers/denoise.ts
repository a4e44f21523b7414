/** denoise: one section, from the previous section's history, by the section step. */
import type { F32 } from "../../shared/tensor/tensor.js";
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { promptSchedule, sectionEmbeddings } from "../../shared/job/timed-prompts.js";
import { keyframeSchedule } from "../../shared/job/keyframes.js";
import { initialHistory, type History } from "../../shared/framepack/history.js";
import { runSectionStep } from "../stages/section-step.js";
import { loraObjectKey } from "../../shared/job/loras.js";
import { conditioning, generatorOf, need, readTensors, timed, writeOnce, type StageHandler } from "./task-io.js";

export const denoiseHandler: StageHandler = async (ctx, task, spec, observer) => {
  const params = renderParamsOf(spec);
  // The job's LoRAs fused into the transformer; a node that lacks a variant reads the files from the store.
  const runtime = await ctx.runtime.withLoras(params.loras, (ref) => ctx.store.get(loraObjectKey(ref.sha256)));
  const k = task.section!;
  const plan = sectionPlanFor(params, runtime.bundle.manifest);
  const text = await readTensors(ctx, task.inputs["prompt"]!);
  const negative = task.inputs["negative"] !== undefined ? await readTensors(ctx, task.inputs["negative"]) : null;
  const image = await readTensors(ctx, task.inputs["imageEmbeds"]!);
  const latents = await readTensors(ctx, task.inputs["imageLatents"]!);
  // Extending a video, its latents stand where the start image's would (shared/framepack/history.ts).
  const imageLatents = need(
    latents.tensors,
    plan.video !== null ? "video_latents" : "image_latents",
    task.inputs["imageLatents"]!,
  );
  const lastImageLatents = (latents.tensors.get("last_image_latents") as F32 | undefined) ?? null;
  // The keyframe this section takes (FramePack-eichi's), if any: its latents are in the same object.
  const keyframe = keyframeSchedule(plan, params.keyframeTimes, params.fps).bySection[k] ?? null;
  const keyframeLatents =
    keyframe === null ? null : need(latents.tensors, `keyframe_latents.${keyframe}`, task.inputs["imageLatents"]!);
  let history: History;
  if (k === 0) history = initialHistory(plan, imageLatents);
  else {
    const h = await readTensors(ctx, task.inputs["history"]!);
    history = {
      latents: need(h.tensors, "history", task.inputs["history"]!),
      generated: Number(h.metadata["generated"]),
    };
  }
  // This section's prompt: the job's distinct prompts are in the text object (encode-text.ts).
  const prompts = promptSchedule(params, plan);
  const encoded = prompts.prompts.map((_, i) => conditioning(text.tensors, task.inputs["prompt"]!, i));
  // "steps" is the section's denoising; "transformer_run" the transformer's own session.run time
  // in it: the difference is the host's share of every step (feeds, transfers, the sampler).
  let transformerRunMs = 0;
  const appended = await timed(observer, "steps", () =>
    runSectionStep(
      runtime,
      {
        plan,
        section: plan.sections[k]!,
        history,
        imageLatents,
        lastImageLatents,
        keyframeLatents,
        generator: generatorOf(task),
        prompt: sectionEmbeddings(prompts, k, encoded),
        ...(negative !== null ? { negative: conditioning(negative.tensors, task.inputs["negative"]!) } : {}),
        imageEmbeds: need(image.tensors, "image_embeds", task.inputs["imageEmbeds"]!),
        params,
      },
      { ...observer, onRun: (ms) => (transformerRunMs += ms) },
    ),
  );
  if (transformerRunMs > 0) observer.onPhase?.("transformer_run", transformerRunMs);
  // The section's latents live on in the history (what the next section and the decode read).
  await timed(observer, "write", () =>
    writeOnce(
      ctx,
      task.outputs["history"]!,
      { history: appended.history.latents, decode_latents: appended.decodeLatents },
      { generated: String(appended.history.generated) },
    ),
  );
};
