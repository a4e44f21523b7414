/** encode_text: the prompt's embeddings (and the negative prompt's, with true CFG). */
import { renderParamsOf } from "../../shared/job/job-spec.js";
import { usesTrueCfg } from "../../shared/job/render-params.js";
import { encodeText, type PromptEmbeddings } from "../stages/encode-text.js";
import { writeOnce, type StageHandler, type Tensors } from "./task-io.js";

const promptTensors = (p: PromptEmbeddings): Tensors => ({ embeds: p.embeds, mask: p.mask, pooled: p.pooled });

export const encodeTextHandler: StageHandler = async (ctx, task, spec) => {
  const { runtime, tokenizers } = ctx;
  const params = renderParamsOf(spec);
  await writeOnce(ctx, task.outputs["prompt"]!, promptTensors(await encodeText(runtime, tokenizers, params.prompt)));
  if (usesTrueCfg(params))
    await writeOnce(
      ctx,
      task.outputs["negative"]!,
      promptTensors(await encodeText(runtime, tokenizers, params.negativePrompt ?? "")),
    );
};
