/**
 * diffusers' framewise (temporal tiled) VAE decoding: latents with more than
 * tile_sample_min_num_frames / ratio frames are decoded in overlapping tiles of that many + 1
 * latent frames, each tile's first frame dropped after the first tile, and neighbouring tiles
 * blended linearly over (tile_sample_min - tile_sample_stride) frames. With spatial tiling
 * (diffusers' vae.enable_tiling(): tiled_decode), each of those tiles larger than a spatial tile is
 * decoded in overlapping spatial tiles blended with blend_v and blend_h. The decoder itself is a
 * callback, so this stays pure and the decoder graph only ever sees short (and small) tiles.
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

/** Tiles asked of the decoder at once: one running, one waiting its turn. */
const TILES_IN_FLIGHT = 2;

/** Runs the jobs with at most `limit` started and not finished, results in the jobs' order. */
async function inOrder<T>(jobs: readonly (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array<T>(jobs.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < jobs.length) {
      const k = next++;
      results[k] = await jobs[k]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, lane));
  return results;
}

/**
 * AutoencoderKLHunyuanVideo._decode's time handling: latents longer than the tile go through
 * _temporal_tiled_decode, others through one decoder call. Tiles of tile_latent + 1 frames start
 * every stride_latent frames; a non-first tile's first decoded frame is dropped; neighbours are
 * blended over tile_sample_min - tile_sample_stride frames; the result is cut to (T - 1) * ratio + 1.
 * Tiles are blended in place and copied once into the result (a 640x640 section is ~340 MB of
 * float32: every extra pass over it costs about as much as a GPU decode tile).
 */
export async function temporalTiledDecode(
  latents: F32,
  vae: TemporalTiling,
  decodeTileIn: DecodeTile,
  spatial?: SpatialTiling,
  /** Tiles asked for at once (a decoder on the same thread as this code gains nothing from two). */
  tilesInFlight = TILES_IN_FLIGHT,
): Promise<F32> {
  if (latents.shape.length !== 5)
    throw new RangeError(`VAE decode takes [B, C, T, h, w] latents, got ${latents.describe()}`);
  // diffusers' _decode and _temporal_tiled_decode send a (temporal tile of) latents wider or
  // taller than a spatial tile through tiled_decode when tiling is enabled, others straight on.
  const decodeTile: DecodeTile =
    spatial === undefined ? decodeTileIn : (t) => spatialTiledDecode(t, spatial, decodeTileIn);
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
  const starts: number[] = [];
  for (let i = 0; i < frames; i += strideLatent) starts.push(i);
  // The next tile is asked for before the previous one is back, so a decoder on another thread
  // (a session worker) starts it as soon as it is free, not after a round trip through this
  // thread; the decoder still runs one tile at a time, and every tile's output is kept anyway.
  // Spatially tiled decodes (small GPUs) keep one temporal tile at a time, their calls in order.
  const decodedTiles = await inOrder(
    starts.map((i) => () => decodeTile(narrow(latents, 2, i, Math.min(tileLatent + 1, frames - i)))),
    spatial === undefined ? tilesInFlight : 1,
  );
  const row: FrameView[] = decodedTiles.map((decoded, k) => {
    const t = decoded.shape[2]!;
    return k > 0 ? { t: decoded, first: 1, count: t - 1 } : { t: decoded, first: 0, count: t };
  });
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

/** diffusers' spatial tiling (vae.enable_tiling()) for AutoencoderKLHunyuanVideo's decode. */
export interface SpatialTiling {
  spatial_compression_ratio: number;
  /** Pixel rows/columns per tile (256 in diffusers: 32 latents). */
  tile_sample_min_height: number;
  tile_sample_min_width: number;
  /** Pixel rows/columns between tile starts (192: 24 latents); tiles blend over min - stride. */
  tile_sample_stride_height: number;
  tile_sample_stride_width: number;
}

export type SpatialTileSizes = Omit<SpatialTiling, "spatial_compression_ratio">;

/** AutoencoderKLHunyuanVideo's tiling defaults (what vae.enable_tiling() with no arguments keeps). */
export const DIFFUSERS_SPATIAL_TILE: Readonly<SpatialTileSizes> = {
  tile_sample_min_height: 256,
  tile_sample_min_width: 256,
  tile_sample_stride_height: 192,
  tile_sample_stride_width: 192,
};

/** A decoded tile [B, C, T, h, w] as a 5-d shape. */
function dims(t: F32): [number, number, number, number, number] {
  return t.shape as [number, number, number, number, number];
}

/**
 * blend_v: b's first rows fade in from a's last ones, in place in b (diffusers writes b in place
 * and later blends read the written tile). Weights are Python floats rounded to float32.
 */
function blendV(a: F32, b: F32, extent: number): void {
  const [, , ta, ha, wa] = dims(a);
  const [bs, c, t, hb, wb] = dims(b);
  if (ta !== t || wa !== wb) throw new RangeError(`blend_v of ${a.describe()} and ${b.describe()}`);
  const n = Math.min(ha, hb, extent);
  const f = Math.fround;
  const ad = a.data;
  const bd = b.data;
  for (let p = 0; p < bs * c * t; p++) {
    for (let y = 0; y < n; y++) {
      const ka = f(1 - y / n);
      const kb = f(y / n);
      const aOff = (p * ha + ha - n + y) * wa;
      const bOff = (p * hb + y) * wb;
      for (let x = 0; x < wb; x++) bd[bOff + x] = f(f(ad[aOff + x]! * ka) + f(bd[bOff + x]! * kb));
    }
  }
}

/** blend_h: b's first columns fade in from a's last ones, in place in b. */
function blendH(a: F32, b: F32, extent: number): void {
  const [, , ta, ha, wa] = dims(a);
  const [bs, c, t, hb, wb] = dims(b);
  if (ta !== t || ha !== hb) throw new RangeError(`blend_h of ${a.describe()} and ${b.describe()}`);
  const n = Math.min(wa, wb, extent);
  const f = Math.fround;
  const ad = a.data;
  const bd = b.data;
  for (let r = 0; r < bs * c * t * hb; r++) {
    const aRow = r * wa + wa - n;
    const bRow = r * wb;
    for (let x = 0; x < n; x++) {
      bd[bRow + x] = f(f(ad[aRow + x]! * f(1 - x / n)) + f(bd[bRow + x]! * f(x / n)));
    }
  }
}

/**
 * AutoencoderKLHunyuanVideo.tiled_decode: latents no taller and no wider than a latent tile
 * (tile_sample_min // ratio) go through one decoder call; others are decoded in tiles of that size
 * starting every tile_sample_stride // ratio latents (the last row and column partial), each tile
 * blended in place with the (already blended) tile above (blend_v) and then the one to its left
 * (blend_h) over tile_sample_min - tile_sample_stride pixels, cut to its first stride pixels,
 * joined row by row and cut to h * ratio x w * ratio.
 */
export async function spatialTiledDecode(latents: F32, tiling: SpatialTiling, decodeTile: DecodeTile): Promise<F32> {
  if (latents.shape.length !== 5)
    throw new RangeError(`VAE decode takes [B, C, T, h, w] latents, got ${latents.describe()}`);
  const [, , , height, width] = dims(latents);
  const r = tiling.spatial_compression_ratio;
  const tileH = Math.floor(tiling.tile_sample_min_height / r);
  const tileW = Math.floor(tiling.tile_sample_min_width / r);
  if (height <= tileH && width <= tileW) return decodeTile(latents);
  const strideH = Math.floor(tiling.tile_sample_stride_height / r);
  const strideW = Math.floor(tiling.tile_sample_stride_width / r);
  if (strideH < 1 || strideW < 1)
    throw new RangeError(
      `tile_sample_stride ${tiling.tile_sample_stride_height}x${tiling.tile_sample_stride_width} is smaller than one latent`,
    );
  const blendHeight = tiling.tile_sample_min_height - tiling.tile_sample_stride_height;
  const blendWidth = tiling.tile_sample_min_width - tiling.tile_sample_stride_width;

  const rows: F32[][] = [];
  for (let i = 0; i < height; i += strideH) {
    const band = narrow(latents, 3, i, Math.min(tileH, height - i));
    const row: F32[] = [];
    for (let j = 0; j < width; j += strideW) row.push(await decodeTile(narrow(band, 4, j, Math.min(tileW, width - j))));
    rows.push(row);
  }
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i]!;
    for (let j = 0; j < row.length; j++) {
      if (i > 0) blendV(rows[i - 1]![j]!, row[j]!, blendHeight);
      if (j > 0) blendH(row[j - 1]!, row[j]!, blendWidth);
    }
  }
  // torch.cat of the cut tiles, then [:H, :W]: a tile's place is the sum of the kept sizes before it.
  const keptH = rows.map((row) => Math.min(tiling.tile_sample_stride_height, dims(row[0]!)[3]));
  const keptW = rows[0]!.map((t) => Math.min(tiling.tile_sample_stride_width, dims(t)[4]));
  const outH = Math.min(
    keptH.reduce((a, b) => a + b, 0),
    height * r,
  );
  const outW = Math.min(
    keptW.reduce((a, b) => a + b, 0),
    width * r,
  );
  const [bs, c, t] = dims(rows[0]![0]!);
  const out = new Float32Array(bs * c * t * outH * outW);
  let y0 = 0;
  for (let i = 0; i < rows.length && y0 < outH; i++) {
    const kh = Math.min(keptH[i]!, outH - y0);
    let x0 = 0;
    for (let j = 0; j < rows[i]!.length && x0 < outW; j++) {
      const tile = rows[i]![j]!;
      const [, , tt, th, tw] = dims(tile);
      if (tt !== t || th < kh) throw new RangeError(`decoded tile ${tile.describe()} does not fit its row`);
      const kw = Math.min(keptW[j]!, outW - x0);
      for (let p = 0; p < bs * c * t; p++) {
        for (let y = 0; y < kh; y++) {
          const src = (p * th + y) * tw;
          out.set(tile.data.subarray(src, src + kw), (p * outH + y0 + y) * outW + x0);
        }
      }
      x0 += kw;
    }
    y0 += kh;
  }
  return new Tensor("float32", [bs, c, t, outH, outW], out);
}
