/**
 * encode_text stage: Llama hidden states (cropped past the prompt template) and CLIP pooled
 * output for one prompt, exactly as diffusers' encode_prompt builds them.
 */
import { Tensor, type F32, type I64 } from "../../shared/tensor/tensor.js";
import { narrow } from "../../shared/tensor/ops.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { TextTokenizers } from "../text/tokenizers.js";

export interface PromptEmbeddings {
  /** [1, max_sequence_length, text_embed_dim] */
  embeds: F32;
  /** [1, max_sequence_length], 1 for real tokens; float because the transformer takes it in its dtype. */
  mask: F32;
  /** [1, pooled_projection_dim] */
  pooled: F32;
  /** Token ids as fed to the encoders, kept for parity checks. */
  llamaIds: I64;
  llamaMask: I64;
  clipIds: I64;
}

export async function encodeText(
  runtime: ModelRuntime,
  tokenizers: TextTokenizers,
  prompt: string,
): Promise<PromptEmbeddings> {
  const cropStart = runtime.bundle.manifest.text_encoder.prompt_template.crop_start;
  const llama = tokenizers.tokenizeLlama(prompt);
  const clip = tokenizers.tokenizeClip(prompt);

  const llamaModel = await runtime.model("text_encoder");
  const { hidden_states: hidden } = await llamaModel.run({
    input_ids: llama.inputIds,
    attention_mask: llama.attentionMask,
  });
  const clipModel = await runtime.model("text_encoder_2");
  const { pooled } = await clipModel.run({ input_ids: clip.inputIds });

  const seq = hidden!.shape[1]!;
  const embeds = narrow(hidden!, 1, cropStart, seq - cropStart);
  const maskData = new Float32Array(seq - cropStart);
  for (let i = 0; i < maskData.length; i++) maskData[i] = Number(llama.attentionMask.data[cropStart + i]);
  return {
    embeds,
    mask: new Tensor("float32", [1, maskData.length], maskData),
    pooled: pooled!,
    llamaIds: llama.inputIds,
    llamaMask: llama.attentionMask,
    clipIds: clip.inputIds,
  };
}
