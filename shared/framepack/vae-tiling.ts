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
import type { DecodedTileCache } from "./decoded-tile-cache.js";

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

/** Tiles asked of the decoder at once: one running, one waiting its turn. */
const TILES_IN_FLIGHT = 2;

export interface TiledDecodeOptions {
  /** Tiles asked for at once (a decoder on the same thread as this code gains nothing from two). */
  tilesInFlight?: number;
  /** Decoded tiles looked up by their latents before decoding (decoded-tile-cache.ts). */
  cache?: DecodedTileCache;
  /** Latent frames [first, first + count) whose tiles a later decode may ask for: kept in `cache`. */
  keep?: { first: number; count: number };
  /**
   * Called as the video's frames become final, in order: `video` is the whole result being
   * filled, frames [0, upTo) of it are done (a tile's frames are final once the tile is blended
   * with the one before it). The mux encodes them while the next tiles decode.
   */
  onFrames?: (video: F32, upTo: number) => void;
  /** The result's own memory, when the caller has it already (the mux's streamed section). */
  into?: F32;
}

/**
 * AutoencoderKLHunyuanVideo._decode's time handling: latents longer than the tile go through
 * _temporal_tiled_decode, others through one decoder call. Tiles of tile_latent + 1 frames start
 * every stride_latent frames; a non-first tile's first decoded frame is dropped; neighbours are
 * blended over tile_sample_min - tile_sample_stride frames; the result is cut to (T - 1) * ratio + 1.
 * Each tile is blended and copied into the result as soon as it and the one before it are decoded
 * (a 640x640 section is ~340 MB of float32: every extra pass over it costs about as much as a GPU
 * decode tile). Decoded tiles are never written to: diffusers blends in place, so a tile's blended
 * head is kept aside and read back where a later blend would read the written tile. A tile that
 * adds no frame to the result (the 1-latent-frame tail of a 19-frame section) is not decoded.
 */
export async function temporalTiledDecode(
  latents: F32,
  vae: TemporalTiling,
  decodeTileIn: DecodeTile,
  spatial?: SpatialTiling,
  options: TiledDecodeOptions = {},
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
  if (!vae.use_framewise_decoding || frames <= tileLatent) {
    const decoded = await decodeTile(latents);
    const video = options.into === undefined ? decoded : fill(options.into, decoded);
    options.onFrames?.(video, video.shape[2]!);
    return video;
  }

  const strideLatent = Math.floor(vae.tile_sample_stride_num_frames / ratio);
  if (strideLatent < 1)
    throw new RangeError(
      `tile_sample_stride_num_frames ${vae.tile_sample_stride_num_frames} is shorter than one latent frame`,
    );
  const strideSample = vae.tile_sample_stride_num_frames;
  const blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames;
  const starts: number[] = [];
  for (let i = 0; i < frames; i += strideLatent) starts.push(i);
  const lengths = starts.map((i) => Math.min(tileLatent + 1, frames - i));
  const decodedFrames = (latentFrames: number): number => (latentFrames - 1) * ratio + 1;
  // A tile's frames after its dropped first one, and how many of them the result keeps.
  const counts = lengths.map((l, k) => decodedFrames(l) - (k > 0 ? 1 : 0));
  const keeps = counts.map((c, k) => Math.min(k === 0 ? strideSample + 1 : strideSample, c));
  const total = Math.min(
    keeps.reduce((a, b) => a + b, 0),
    decodedFrames(frames),
  );
  let used = 0;
  for (let at = 0; used < starts.length && at < total && keeps[used]! > 0; used++) at += keeps[used]!;

  const { cache, keep } = options;
  const salt = spatial === undefined ? "" : JSON.stringify(spatial);
  const tileAt = (k: number): Promise<F32> => {
    const [i, l] = [starts[k]!, lengths[k]!];
    const tile = narrow(latents, 2, i, l);
    if (cache === undefined) return decodeTile(tile);
    const kept = keep !== undefined && i >= keep.first && i + l <= keep.first + keep.count;
    return cache.decode(tile, salt, kept, () => decodeTile(tile));
  };
  // The next tile is asked for before the previous one is back, so a decoder on another thread
  // (a session worker) starts it as soon as it is free, not after a round trip through this
  // thread; the decoder still runs one tile at a time. Spatially tiled decodes (small GPUs) keep
  // one temporal tile at a time, their calls in order.
  const limit = spatial === undefined ? (options.tilesInFlight ?? TILES_IN_FLIGHT) : 1;
  const pending: (Promise<F32> | undefined)[] = [];
  let asked = 0;
  const ask = (done: number): void => {
    for (; asked < used && asked - done < limit; asked++) {
      const p = tileAt(asked);
      p.catch(() => undefined); // awaited in order below; a later tile's failure waits its turn
      pending[asked] = p;
    }
  };

  let out: Float32Array | undefined;
  let video: F32 | undefined;
  let shape: [number, number, number, number] = [0, 0, 0, 0]; // bs, c, h, w
  /** The tile before: its data, first kept frame, frame count, and its blended head (diffusers writes it in place). */
  let prev: { t: F32; first: number; count: number; head: Float32Array; n: number } | undefined;
  let at = 0;
  for (let k = 0; k < used; k++) {
    ask(k);
    const tile = await pending[k]!;
    pending[k] = undefined;
    const [tbs, tc, tt, th, tw] = tile.shape as [number, number, number, number, number];
    if (tt !== decodedFrames(lengths[k]!))
      throw new RangeError(
        `the decoder gave ${tile.describe()} for ${lengths[k]} latent frames, expected ${decodedFrames(lengths[k]!)} frames`,
      );
    if (out === undefined) {
      shape = [tbs, tc, th, tw];
      video =
        options.into ?? new Tensor("float32", [tbs, tc, total, th, tw], new Float32Array(tbs * tc * total * th * tw));
      if (video.shape.join() !== [tbs, tc, total, th, tw].join())
        throw new RangeError(`a decode into ${video.describe()} gives [${[tbs, tc, total, th, tw].join(", ")}]`);
      out = video.data;
    } else if (tbs !== shape[0] || tc !== shape[1] || th !== shape[2] || tw !== shape[3])
      throw new RangeError(`decoded tile ${tile.describe()} does not match the first tile's [${shape.join(", ")}]`);
    const [bs, c, h, w] = shape;
    const frame = h * w;
    const first = k > 0 ? 1 : 0;
    const count = counts[k]!;
    // blend_t: this tile's first n frames fade in from the previous tile's last n.
    const n = prev === undefined ? 0 : Math.min(prev.count, count, blend);
    const head = new Float32Array(bs * c * n * frame);
    if (prev !== undefined && n > 0) {
      const f = Math.fround;
      const a = prev;
      const ta = a.t.shape[2]!;
      for (let bc = 0; bc < bs * c; bc++) {
        for (let x = 0; x < n; x++) {
          const wa = f(1 - x / n);
          const wb = f(x / n);
          const pos = a.count - n + x; // in a's kept frames
          const src =
            pos < a.n
              ? a.head.subarray((bc * a.n + pos) * frame, (bc * a.n + pos + 1) * frame)
              : a.t.data.subarray((bc * ta + a.first + pos) * frame, (bc * ta + a.first + pos + 1) * frame);
          const bOff = (bc * tt + first + x) * frame;
          const hOff = (bc * n + x) * frame;
          const bd = tile.data;
          for (let p = 0; p < frame; p++) head[hOff + p] = f(f(src[p]! * wa) + f(bd[bOff + p]! * wb));
        }
      }
    }
    const kept = Math.min(keeps[k]!, total - at);
    const fromHead = Math.min(n, kept);
    for (let bc = 0; bc < bs * c; bc++) {
      const dst = (bc * total + at) * frame;
      if (fromHead > 0) out.set(head.subarray(bc * n * frame, (bc * n + fromHead) * frame), dst);
      const src = (bc * tt + first + fromHead) * frame;
      out.set(tile.data.subarray(src, src + (kept - fromHead) * frame), dst + fromHead * frame);
    }
    at += kept;
    prev = { t: tile, first, count, head, n };
    options.onFrames?.(video!, at);
  }
  return video!;
}

/** `decoded` copied into `into` (the same shape). */
function fill(into: F32, decoded: F32): F32 {
  if (into.shape.join() !== decoded.shape.join())
    throw new RangeError(`a decode into ${into.describe()} gives ${decoded.describe()}`);
  into.data.set(decoded.data);
  return into;
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
