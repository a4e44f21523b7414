/** Small LoRA files for the tiny transformer (hidden 20), in the formats nodes read. */
import { Tensor } from "../../shared/tensor/tensor.js";
import { encodeSafetensors } from "../../shared/tensor/safetensors.js";

/** Deterministic values in [-0.15, 0.15). */
export function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.3;
  }
  return out;
}

const f32 = (shape: number[], seed: number): Tensor<"float32"> =>
  new Tensor(
    "float32",
    shape,
    values(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
  );

/** diffusers/PEFT keys: module -> [out, in]. */
export function diffusersLora(
  modules: Record<string, [number, number]>,
  rank = 4,
  seed = 1,
  metadata?: Record<string, string>,
): Uint8Array {
  const tensors: Record<string, Tensor> = {};
  let i = 0;
  for (const [m, [out, inDim]] of Object.entries(modules)) {
    tensors[`transformer.${m}.lora_A.weight`] = f32([rank, inDim], seed * 1000 + i++);
    tensors[`transformer.${m}.lora_B.weight`] = f32([out, rank], seed * 1000 + i++);
  }
  return encodeSafetensors(tensors, metadata);
}

/** musubi/kohya keys: module (dots) -> [out, in], with alpha when given. */
export function kohyaLora(modules: Record<string, [number, number]>, rank = 4, seed = 1, alpha?: number): Uint8Array {
  const tensors: Record<string, Tensor> = {};
  let i = 0;
  for (const [m, [out, inDim]] of Object.entries(modules)) {
    const k = `lora_unet_${m.replaceAll(".", "_")}`;
    tensors[`${k}.lora_down.weight`] = f32([rank, inDim], seed * 1000 + i++);
    tensors[`${k}.lora_up.weight`] = f32([out, rank], seed * 1000 + i++);
    if (alpha !== undefined) tensors[`${k}.alpha`] = new Tensor("float32", [], new Float32Array([alpha]));
  }
  return encodeSafetensors(tensors);
}

/** A good LoRA for the tiny bundle: the first double block's image attention. */
export const goodLora = (seed = 1): Uint8Array =>
  diffusersLora({ "transformer_blocks.0.attn.to_q": [20, 20], "transformer_blocks.0.attn.to_v": [20, 20] }, 4, seed);
