/**
 * encode_text: the prompt's embeddings (and the negative prompt's, with true CFG). Prompts that
 * change over time: every distinct prompt of the job, each encoded once, in one object
 * (conditioning() in task-io.ts reads prompt i; the denoise handler picks each section's).
 */
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { usesTrueCfg } from "../../shared/job/render-params.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { promptSchedule } from "../../shared/job/timed-prompts.js";
import { encodeText } from "../stages/encode-text.js";
import { conditioningTensors, writeOnce, type StageHandler, type Tensors } from "./task-io.js";

export const encodeTextHandler: StageHandler = async (ctx, task, spec) => {
  const { runtime, tokenizers } = ctx;
  const params = renderParamsOf(spec);
  const { prompts } = promptSchedule(params, sectionPlanFor(params, runtime.bundle.manifest));
  const encoded: Tensors = {};
  for (const [i, p] of prompts.entries())
    Object.assign(encoded, conditioningTensors(await encodeText(runtime, tokenizers, p), i));
  await writeOnce(ctx, task.outputs["prompt"]!, encoded);
  if (usesTrueCfg(params))
    await writeOnce(
      ctx,
      task.outputs["negative"]!,
      conditioningTensors(await encodeText(runtime, tokenizers, params.negativePrompt ?? "")),
    );
};
