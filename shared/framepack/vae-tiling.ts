/**
 * diffusers' framewise (temporal tiled) VAE decoding: latents with more than
 * tile_sample_min_num_frames / ratio frames are decoded in overlapping tiles of that many + 1
 * latent frames, each tile's first frame dropped after the first tile, and neighbouring tiles
 * blended linearly over (tile_sample_min - tile_sample_stride) frames. The decoder itself is a
 * callback, so this stays pure and the decoder graph only ever sees short tiles.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { narrow, cat } from "../tensor/ops.js";
import type { BundleManifest } from "../bundle/manifest.js";

export type DecodeTile = (latents: F32) => Promise<F32>;

/** blend_t: b's first frames fade in from a's last ones; returns a new tensor. */
function blendT(a: F32, b: F32, extent: number): F32 {
  const [bs, c, tb, h, w] = b.shape as [number, number, number, number, number];
  const ta = a.shape[2]!;
  const n = Math.min(ta, tb, extent);
  const out = new Float32Array(b.data);
  const frame = h * w;
  const f = Math.fround;
  for (let bc = 0; bc < bs * c; bc++) {
    for (let x = 0; x < n; x++) {
      const wa = f(1 - x / n);
      const wb = f(x / n);
      const aOff = (bc * ta + ta - n + x) * frame;
      const bOff = (bc * tb + x) * frame;
      for (let p = 0; p < frame; p++) out[bOff + p] = f(f(a.data[aOff + p]! * wa) + f(b.data[bOff + p]! * wb));
    }
  }
  return new Tensor("float32", b.shape, out);
}

export async function temporalTiledDecode(latents: F32, vae: BundleManifest["vae"], decodeTile: DecodeTile): Promise<F32> {
  const frames = latents.shape[2]!;
  const ratio = vae.temporal_compression_ratio;
  const tileLatent = Math.floor(vae.tile_sample_min_num_frames / ratio);
  if (!vae.use_framewise_decoding || frames <= tileLatent) return decodeTile(latents);

  const strideLatent = Math.floor(vae.tile_sample_stride_num_frames / ratio);
  const strideSample = vae.tile_sample_stride_num_frames;
  const blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames;
  const row: F32[] = [];
  for (let i = 0; i < frames; i += strideLatent) {
    let decoded = await decodeTile(narrow(latents, 2, i, Math.min(tileLatent + 1, frames - i)));
    if (i > 0) decoded = narrow(decoded, 2, 1, decoded.shape[2]! - 1);
    row.push(decoded);
  }
  const parts = row.map((tile, i) => {
    if (i === 0) return narrow(tile, 2, 0, Math.min(strideSample + 1, tile.shape[2]!));
    const blended = blendT(row[i - 1]!, tile, blend);
    return narrow(blended, 2, 0, Math.min(strideSample, blended.shape[2]!));
  });
  const joined = cat(parts, 2);
  return narrow(joined, 2, 0, Math.min(joined.shape[2]!, (frames - 1) * ratio + 1));
}
