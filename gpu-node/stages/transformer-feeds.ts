/** The inputs of one transformer call, built the same way by every sampler's loop. */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { DenoiseInput, TextConditioning } from "./denoise-section.js";

/** A [1] float32 tensor: the timestep and the distilled guidance. */
export function scalar(value: number): F32 {
  return new Tensor("float32", [1], Float32Array.of(value));
}

/**
 * The transformer inputs that are the same objects for every call of a section (its context,
 * image embedding, prompt, guidance): only hidden_states and timestep change from step to step.
 * Passed to OnnxModel.run as `steady`, so a session on a worker thread receives them once.
 */
export const STEADY_TRANSFORMER_FEEDS: ReadonlySet<string> = new Set([
  "image_embeds",
  "indices_latents",
  "guidance",
  "latents_clean",
  "indices_latents_clean",
  "latents_history_2x",
  "indices_latents_history_2x",
  "latents_history_4x",
  "indices_latents_history_4x",
  "encoder_hidden_states",
  "encoder_attention_mask",
  "pooled_projections",
]);

/** One transformer call's inputs: the latents, timestep and guidance, the section's context and one prompt. */
export function transformerFeeds(
  input: Pick<DenoiseInput, "imageEmbeds" | "context">,
  latents: F32,
  timestep: F32,
  guidance: F32,
  text: TextConditioning,
) {
  const { context } = input;
  return {
    hidden_states: latents,
    timestep,
    image_embeds: input.imageEmbeds,
    indices_latents: context.indicesLatents,
    guidance,
    latents_clean: context.latentsClean,
    indices_latents_clean: context.indicesClean,
    latents_history_2x: context.history2x,
    indices_latents_history_2x: context.indices2x,
    latents_history_4x: context.history4x,
    indices_latents_history_4x: context.indices4x,
    encoder_hidden_states: text.embeds,
    encoder_attention_mask: text.mask,
    pooled_projections: text.pooled,
  };
}
