/**
 * decode stage: VAE latents to video in [-1, 1]. Long inputs are decoded in temporal tiles exactly
 * like diffusers' framewise decoding, so the ONNX decoder only ever sees a few latent frames and
 * its memory stays flat whatever the video length.
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { map } from "../../shared/tensor/ops.js";
import { temporalTiledDecode } from "../../shared/framepack/vae-tiling.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";

/** Generation latents -> what vae.decode receives: latents / scaling_factor in float32. */
export function toVaeLatents(latents: F32, scalingFactor: number): F32 {
  const sf = Math.fround(scalingFactor);
  return map(latents, (x) => x / sf);
}

/** vaeLatents: [1, C, T, h, w] already divided by the scaling factor -> [1, 3, (T-1)*4+1, H, W]. */
export async function decodeVideo(runtime: ModelRuntime, vaeLatents: F32): Promise<F32> {
  const model = await runtime.model("vae_decoder");
  return temporalTiledDecode(
    vaeLatents,
    runtime.bundle.manifest.vae,
    async (tile) => (await model.run({ latents: tile })).sample!,
  );
}
