/**
 * encode_image stage: SigLIP embeddings of the start image (and end image), and the VAE posterior
 * of each. The posterior sample uses the job's generator, so the caller decides the draw order.
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import type { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { siglipPixels } from "../../shared/image/siglip.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";

/** pixels: [1, 3, H, W] in [-1, 1] -> [1, tokens, hidden] */
export async function encodeImageEmbeds(
  runtime: ModelRuntime,
  pixels: F32,
): Promise<{ embeds: F32; siglipInput: F32 }> {
  const cfg = runtime.bundle.manifest.image_encoder;
  const siglipInput = siglipPixels(pixels, cfg);
  const model = await runtime.model("image_encoder");
  const { last_hidden_state: embeds } = await model.run({ pixel_values: siglipInput });
  return { embeds: embeds!, siglipInput };
}

export interface LatentPosterior {
  mean: F32;
  std: F32;
}

/** pixels: [1, 3, H, W] in [-1, 1] -> VAE posterior over [1, C, 1, h, w] */
export async function encodeImagePosterior(runtime: ModelRuntime, pixels: F32): Promise<LatentPosterior> {
  const [b, c, h, w] = pixels.shape as [number, number, number, number];
  const model = await runtime.model("vae_encoder");
  const { mean, std } = await model.run({ sample: pixels.reshape([b, c, 1, h, w]) });
  return { mean: mean!, std: std! };
}

/** diffusers: latent_dist.sample(generator) * scaling_factor, in float32. */
export function sampleLatents(posterior: LatentPosterior, generator: TorchGenerator, scalingFactor: number): F32 {
  const noise = generator.randn(posterior.mean.shape);
  const out = new Float32Array(noise.numel);
  const sf = Math.fround(scalingFactor);
  const { mean, std } = posterior;
  for (let i = 0; i < out.length; i++) {
    const x = Math.fround(mean.data[i]! + Math.fround(std.data[i]! * noise.data[i]!));
    out[i] = Math.fround(x * sf);
  }
  return new Tensor("float32", mean.shape, out);
}

/**
 * The keyframes' latents (indexed as the job's keyframes), their posterior samples drawn in
 * `order` (shared/job/keyframes.ts drawOrder: plan order, FramePack-eichi's) after the start and
 * end images'.
 */
export async function sampleKeyframeLatents(
  runtime: ModelRuntime,
  pixelsOf: (i: number) => Promise<F32>,
  order: readonly number[],
  generator: TorchGenerator,
  scalingFactor: number,
): Promise<F32[]> {
  const out: F32[] = [];
  for (const i of order)
    out[i] = sampleLatents(await encodeImagePosterior(runtime, await pixelsOf(i)), generator, scalingFactor);
  return out;
}
