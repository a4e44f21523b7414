/**
 * diffusers' framewise (temporal tiled) VAE decoding: latents with more than
 * tile_sample_min_num_frames / ratio frames are decoded in overlapping tiles of that many + 1
 * latent frames, each tile's first frame dropped after the first tile, and neighbouring tiles
 * blended linearly over (tile_sample_min - tile_sample_stride) frames. The decoder itself is a
 * callback, so this stays pure and the decoder graph only ever sees short tiles.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { narrow, cat } from "../tensor/ops.js";

export type DecodeTile = (latents: F32) => Promise<F32>;

/** The VAE config fields that decide temporal tiling (a subset of the bundle's vae section). */
export interface TemporalTiling {
  temporal_compression_ratio: number;
  use_framewise_decoding: boolean;
  /** Pixel frames per tile (16 for HunyuanVideo: 4 latent frames + 1 of context). */
  tile_sample_min_num_frames: number;
  /** Pixel frames between tile starts (12: 3 latent frames). */
  tile_sample_stride_num_frames: number;
}

/**
 * blend_t: b's first frames fade in from a's last ones. diffusers writes into b in place and later
 * blends use the written tile, so the caller stores the result back in the row. The weights
 * 1 - x/n and x/n are Python floats, rounded to float32 by torch's scalar multiply.
 */
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

/**
 * AutoencoderKLHunyuanVideo._decode's time handling: latents longer than the tile go through
 * _temporal_tiled_decode, others through one decoder call. Tiles of tile_latent + 1 frames start
 * every stride_latent frames; a non-first tile's first decoded frame is dropped; neighbours are
 * blended over tile_sample_min - tile_sample_stride frames; the result is cut to (T - 1) * ratio + 1.
 */
export async function temporalTiledDecode(latents: F32, vae: TemporalTiling, decodeTile: DecodeTile): Promise<F32> {
  if (latents.shape.length !== 5) throw new RangeError(`VAE decode takes [B, C, T, h, w] latents, got ${latents.describe()}`);
  const frames = latents.shape[2]!;
  const ratio = vae.temporal_compression_ratio;
  const tileLatent = Math.floor(vae.tile_sample_min_num_frames / ratio);
  if (!vae.use_framewise_decoding || frames <= tileLatent) return decodeTile(latents);

  const strideLatent = Math.floor(vae.tile_sample_stride_num_frames / ratio);
  if (strideLatent < 1) throw new RangeError(`tile_sample_stride_num_frames ${vae.tile_sample_stride_num_frames} is shorter than one latent frame`);
  const strideSample = vae.tile_sample_stride_num_frames;
  const blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames;
  const row: F32[] = [];
  for (let i = 0; i < frames; i += strideLatent) {
    let decoded = await decodeTile(narrow(latents, 2, i, Math.min(tileLatent + 1, frames - i)));
    if (i > 0) decoded = narrow(decoded, 2, 1, decoded.shape[2]! - 1);
    row.push(decoded);
  }
  const parts: F32[] = [];
  for (let i = 0; i < row.length; i++) {
    if (i === 0) {
      parts.push(narrow(row[0]!, 2, 0, Math.min(strideSample + 1, row[0]!.shape[2]!)));
      continue;
    }
    const blended = blendT(row[i - 1]!, row[i]!, blend);
    row[i] = blended;
    parts.push(narrow(blended, 2, 0, Math.min(strideSample, blended.shape[2]!)));
  }
  const joined = cat(parts, 2);
  return narrow(joined, 2, 0, Math.min(joined.shape[2]!, (frames - 1) * ratio + 1));
}
