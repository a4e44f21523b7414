/**
 * diffusers' framewise (temporal tiled) VAE encoding, AutoencoderKLHunyuanVideo._encode with
 * use_framewise_encoding (its default): a video of more than tile_sample_min_num_frames frames is
 * encoded in tiles of that many + 1 frames starting every tile_sample_stride_num_frames frames, a
 * non-first tile's first latent dropped, neighbours blended with blend_t over (min - stride) / ratio
 * latents, and the result cut to (T - 1) // ratio + 1 latents. The encoder is a callback giving the
 * posterior's mean and std of frames [first, first + count), so this stays pure and the encoder graph
 * sees one tile (4k + 1 frames: 17, or what the video's end leaves) at a time.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { cat, narrow } from "../tensor/ops.js";

/** The VAE posterior (DiagonalGaussianDistribution) as the exported encoder gives it. */
export interface Posterior {
  mean: F32;
  std: F32;
}

/** Encodes frames [first, first + count) of the video. */
export type EncodeFrames = (first: number, count: number) => Promise<Posterior>;

/** The VAE config fields that decide temporal tiling (a subset of the bundle's vae section). */
export interface TemporalEncodeTiling {
  temporal_compression_ratio: number;
  /** Pixel frames per tile, less one (16 for HunyuanVideo). */
  tile_sample_min_num_frames: number;
  /** Pixel frames between tile starts (12). */
  tile_sample_stride_num_frames: number;
}

const f = Math.fround;

/**
 * blend_t on the raw moments (mean and log-variance) before they become a distribution. HunyuanVideo
 * blends over one latent, whose weights are 1 and 0: a copy of a's last latent into b's first, so
 * blending mean and std instead gives the same values. Over more latents the std would not blend as
 * the log-variance does, so such a VAE is refused rather than encoded differently.
 */
function blendT(a: F32, b: F32, extent: number): F32 {
  const n = Math.min(a.shape[2]!, b.shape[2]!, extent);
  if (n === 0) return b;
  const [bs, c, tb, h, w] = b.shape as [number, number, number, number, number];
  const ta = a.shape[2]!;
  const frame = h * w;
  const out = new Float32Array(b.data);
  for (let bc = 0; bc < bs * c; bc++) {
    const aOff = (bc * ta + ta - 1) * frame;
    const bOff = bc * tb * frame;
    // a * (1 - 0 / 1) + b * (0 / 1), as torch computes it in float32.
    for (let p = 0; p < frame; p++) out[bOff + p] = f(f(a.data[aOff + p]! * 1) + f(b.data[bOff + p]! * 0));
  }
  return new Tensor("float32", b.shape, out);
}

const frames = (p: Posterior, first: number, count: number): Posterior => ({
  mean: narrow(p.mean, 2, first, count),
  std: narrow(p.std, 2, first, count),
});

/** The posterior of a video of `total` frames, encoded as diffusers' vae.encode does it. */
export async function temporalTiledEncode(
  total: number,
  vae: TemporalEncodeTiling,
  encode: EncodeFrames,
): Promise<Posterior> {
  const ratio = vae.temporal_compression_ratio;
  const tileFrames = vae.tile_sample_min_num_frames;
  const stride = vae.tile_sample_stride_num_frames;
  if (!Number.isInteger(total) || total < 1 || (total - 1) % ratio !== 0)
    throw new RangeError(`the VAE encodes (T - 1) * ${ratio} + 1 frames, got ${total}`);
  if (total <= tileFrames) return encode(0, total);
  const strideLatent = Math.floor(stride / ratio);
  const blend = Math.floor(tileFrames / ratio) - strideLatent;
  if (blend > 1)
    throw new RangeError(
      `temporal encode tiles blend over ${blend} latents; the exported encoder gives mean and std, which blend as diffusers' log-variance does only over 1`,
    );
  const row: Posterior[] = [];
  for (let i = 0; i < total; i += stride) {
    const count = Math.min(tileFrames + 1, total - i);
    // A later tile's first latent is dropped: a tile of `ratio` frames or fewer adds nothing.
    if (i > 0 && count <= ratio) break;
    let tile = await encode(i, count);
    if (i > 0) tile = frames(tile, 1, tile.mean.shape[2]! - 1);
    row.push(tile);
  }
  const parts = [frames(row[0]!, 0, Math.min(strideLatent + 1, row[0]!.mean.shape[2]!))];
  for (let i = 1; i < row.length; i++) {
    const prev = row[i - 1]!;
    const tile = row[i]!;
    // diffusers blends in place, so the next tile blends with this one's blended latents.
    row[i] = { mean: blendT(prev.mean, tile.mean, blend), std: blendT(prev.std, tile.std, blend) };
    parts.push(frames(row[i]!, 0, Math.min(strideLatent, tile.mean.shape[2]!)));
  }
  const latents = Math.floor((total - 1) / ratio) + 1;
  const all = {
    mean: cat(
      parts.map((p) => p.mean),
      2,
    ),
    std: cat(
      parts.map((p) => p.std),
      2,
    ),
  };
  return frames(all, 0, Math.min(latents, all.mean.shape[2]!));
}
