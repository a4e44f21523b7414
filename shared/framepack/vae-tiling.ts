/**
 * diffusers' framewise (temporal tiled) VAE decoding: latents with more than
 * tile_sample_min_num_frames / ratio frames are decoded in overlapping tiles of that many + 1
 * latent frames, each tile's first frame dropped after the first tile, and neighbouring tiles
 * blended linearly over (tile_sample_min - tile_sample_stride) frames. The decoder itself is a
 * callback, so this stays pure and the decoder graph only ever sees short tiles.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { narrow } from "../tensor/ops.js";

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

/** Frames [first, first + count) of a decoded tile along dim 2, without copying them out. */
interface FrameView {
  t: F32;
  first: number;
  count: number;
}

/**
 * blend_t: b's first frames fade in from a's last ones. diffusers writes into b in place and later
 * blends use the written tile, so b is blended in place. The weights 1 - x/n and x/n are Python
 * floats, rounded to float32 by torch's scalar multiply.
 */
function blendT(a: FrameView, b: FrameView, extent: number): void {
  const [bs, c, tb, h, w] = b.t.shape as [number, number, number, number, number];
  const ta = a.t.shape[2]!;
  const n = Math.min(a.count, b.count, extent);
  const frame = h * w;
  const f = Math.fround;
  const ad = a.t.data;
  const bd = b.t.data;
  for (let bc = 0; bc < bs * c; bc++) {
    for (let x = 0; x < n; x++) {
      const wa = f(1 - x / n);
      const wb = f(x / n);
      const aOff = (bc * ta + a.first + a.count - n + x) * frame;
      const bOff = (bc * tb + b.first + x) * frame;
      for (let p = 0; p < frame; p++) bd[bOff + p] = f(f(ad[aOff + p]! * wa) + f(bd[bOff + p]! * wb));
    }
  }
}

/**
 * AutoencoderKLHunyuanVideo._decode's time handling: latents longer than the tile go through
 * _temporal_tiled_decode, others through one decoder call. Tiles of tile_latent + 1 frames start
 * every stride_latent frames; a non-first tile's first decoded frame is dropped; neighbours are
 * blended over tile_sample_min - tile_sample_stride frames; the result is cut to (T - 1) * ratio + 1.
 * Tiles are blended in place and copied once into the result (a 640x640 section is ~340 MB of
 * float32: every extra pass over it costs about as much as a GPU decode tile).
 */
export async function temporalTiledDecode(latents: F32, vae: TemporalTiling, decodeTile: DecodeTile): Promise<F32> {
  if (latents.shape.length !== 5)
    throw new RangeError(`VAE decode takes [B, C, T, h, w] latents, got ${latents.describe()}`);
  const frames = latents.shape[2]!;
  const ratio = vae.temporal_compression_ratio;
  const tileLatent = Math.floor(vae.tile_sample_min_num_frames / ratio);
  if (!vae.use_framewise_decoding || frames <= tileLatent) return decodeTile(latents);

  const strideLatent = Math.floor(vae.tile_sample_stride_num_frames / ratio);
  if (strideLatent < 1)
    throw new RangeError(
      `tile_sample_stride_num_frames ${vae.tile_sample_stride_num_frames} is shorter than one latent frame`,
    );
  const strideSample = vae.tile_sample_stride_num_frames;
  const blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames;
  const row: FrameView[] = [];
  for (let i = 0; i < frames; i += strideLatent) {
    const decoded = await decodeTile(narrow(latents, 2, i, Math.min(tileLatent + 1, frames - i)));
    const t = decoded.shape[2]!;
    row.push(i > 0 ? { t: decoded, first: 1, count: t - 1 } : { t: decoded, first: 0, count: t });
  }
  const keep = row.map((v, i) => Math.min(i === 0 ? strideSample + 1 : strideSample, v.count));
  const total = Math.min(
    keep.reduce((a, b) => a + b, 0),
    (frames - 1) * ratio + 1,
  );
  const [bs, c, , h, w] = row[0]!.t.shape as [number, number, number, number, number];
  const frame = h * w;
  const out = new Float32Array(bs * c * total * frame);
  let at = 0;
  for (let i = 0; i < row.length && at < total; i++) {
    if (i > 0) blendT(row[i - 1]!, row[i]!, blend);
    const v = row[i]!;
    const k = Math.min(keep[i]!, total - at);
    const tv = v.t.shape[2]!;
    for (let bc = 0; bc < bs * c; bc++) {
      const src = (bc * tv + v.first) * frame;
      out.set(v.t.data.subarray(src, src + k * frame), (bc * total + at) * frame);
    }
    at += k;
  }
  return new Tensor("float32", [bs, c, total, h, w], out);
}
