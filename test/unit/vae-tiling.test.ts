/**
 * Temporal tiled decoding with a fake decoder whose output is known in closed form, so the tiled
 * result can be checked against an independent frame-by-frame computation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DIFFUSERS_SPATIAL_TILE,
  spatialTiledDecode,
  temporalTiledDecode,
  type SpatialTiling,
  type TemporalTiling,
} from "../../shared/framepack/vae-tiling.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";

const VAE: TemporalTiling = {
  temporal_compression_ratio: 4,
  use_framewise_decoding: true,
  tile_sample_min_num_frames: 16,
  tile_sample_stride_num_frames: 12,
};

/**
 * Fake decoder: a tile starting at latent frame s with L frames decodes to (L-1)*4+1 frames whose
 * value at frame j is 1000*s + j (one channel, one pixel), so every output frame says which tile
 * and which tile frame it came from.
 */
function fakeDecoder(calls: number[][]): (tile: F32) => Promise<F32> {
  return async (tile) => {
    const s = tile.data[0]!; // latent frame t holds the value t
    const l = tile.shape[2]!;
    calls.push([s, l]);
    const n = (l - 1) * 4 + 1;
    return Tensor.f32(
      [1, 1, n, 1, 1],
      Array.from({ length: n }, (_, j) => 1000 * s + j),
    );
  };
}

/** Independent expectation: output frame o of the tiled decode, straight from the tile layout. */
function expected(frames: number): number[] {
  const f = Math.fround;
  const starts: number[] = [];
  for (let i = 0; i < frames; i += 3) starts.push(i);
  // value of tile k (after dropping its first frame when k > 0) at frame x
  const tileLen = (k: number): number => (Math.min(5, frames - starts[k]!) - 1) * 4 + 1 - (k > 0 ? 1 : 0);
  const raw = (k: number, x: number): number => 1000 * starts[k]! + x + (k > 0 ? 1 : 0);
  const blended = new Map<string, number>();
  const val = (k: number, x: number): number => blended.get(`${k}:${x}`) ?? raw(k, x);
  for (let k = 1; k < starts.length; k++) {
    const n = Math.min(tileLen(k - 1), tileLen(k), 4);
    for (let x = 0; x < n; x++) {
      const a = val(k - 1, tileLen(k - 1) - n + x);
      blended.set(`${k}:${x}`, f(f(a * f(1 - x / n)) + f(raw(k, x) * f(x / n))));
    }
  }
  const out: number[] = [];
  starts.forEach((_, k) => {
    const keep = Math.min(k === 0 ? 13 : 12, tileLen(k));
    for (let x = 0; x < keep; x++) out.push(val(k, x));
  });
  return out.slice(0, (frames - 1) * 4 + 1);
}

for (const frames of [5, 6, 9, 10, 18, 19, 37]) {
  test(`${frames} latent frames decode in overlapping tiles of 5 every 3, blended over 4 frames`, async () => {
    const latents = Tensor.f32(
      [1, 1, frames, 1, 1],
      Array.from({ length: frames }, (_, t) => t),
    );
    const calls: number[][] = [];
    const video = await temporalTiledDecode(latents, VAE, fakeDecoder(calls));
    assert.equal(video.shape[2], (frames - 1) * 4 + 1);
    assert.deepEqual([...video.data], expected(frames));
    // A tile of one latent frame (after its dropped first frame: none) adds nothing: not decoded.
    assert.deepEqual(
      calls.map((c) => c[0]),
      Array.from({ length: Math.ceil(frames / 3) }, (_, k) => 3 * k).filter((s) => frames - s >= 2),
    );
    assert.ok(calls.every(([, l]) => l! <= 5));
  });
}

test("short latents, or framewise decoding off, make one decoder call", async () => {
  for (const [frames, vae] of [
    [4, VAE],
    [9, { ...VAE, use_framewise_decoding: false }],
  ] as const) {
    const calls: number[][] = [];
    const latents = Tensor.f32(
      [1, 1, frames, 1, 1],
      Array.from({ length: frames }, (_, t) => t),
    );
    const video = await temporalTiledDecode(latents, vae, fakeDecoder(calls));
    assert.deepEqual(calls, [[0, frames]]);
    assert.equal(video.shape[2], (frames - 1) * 4 + 1);
  }
});

const SPATIAL: SpatialTiling = { spatial_compression_ratio: 8, ...DIFFUSERS_SPATIAL_TILE };

/** Fake spatial decoder: a constant per tile (its first latent), 8x in space, (t-1)*4+1 frames; records tile shapes. */
function constantDecoder(calls: number[][]): (tile: F32) => Promise<F32> {
  return async (tile) => {
    const [, , t, h, w] = tile.shape as [number, number, number, number, number];
    calls.push([t, h, w]);
    const frames = (t - 1) * 4 + 1;
    return Tensor.f32([1, 1, frames, h * 8, w * 8], new Array<number>(frames * h * 64 * w).fill(tile.data[0]!));
  };
}

test("spatial tiling: 32x32-latent tiles every 24 latents, partial last row and column, blended", async () => {
  const [h, w] = [34, 50];
  // latent (y, x) holds 1 + 10 * row + column of the tile starting there (other positions 0)
  const data = new Array<number>(h * w).fill(0);
  for (let i = 0; i < h; i += 24) for (let j = 0; j < w; j += 24) data[i * w + j] = 1 + 10 * (i / 24) + j / 24;
  const calls: number[][] = [];
  const out = await spatialTiledDecode(Tensor.f32([1, 1, 1, h, w], data), SPATIAL, constantDecoder(calls));
  assert.deepEqual(calls, [
    [1, 32, 32],
    [1, 32, 26],
    [1, 32, 2],
    [1, 10, 32],
    [1, 10, 26],
    [1, 10, 2],
  ]);
  assert.deepEqual(out.shape, [1, 1, 1, 272, 400]);
  const at = (y: number, x: number): number => out.data[y * 400 + x]!;
  assert.equal(at(0, 0), 1); // tile (0, 0) alone
  assert.equal(at(0, 191), 1); // its last kept column: blend_h only touches the next tile's start
  assert.equal(at(0, 192), 1); // tile (0, 1)'s first column is all tile (0, 0) (weight 1 - 0/64)
  assert.equal(at(0, 192 + 32), Math.fround(Math.fround(1 * 0.5) + Math.fround(2 * 0.5)));
  assert.equal(at(0, 192 + 64), 2); // past the blend, tile (0, 1) alone
  // the last row is 80 px tall, so blend_v runs over min(256, 80, 64) = 64 rows
  assert.equal(at(192 + 32, 0), Math.fround(Math.fround(1 * 0.5) + Math.fround(11 * 0.5)));
  assert.equal(at(271, 0), 11);
  // the last column is 16 px wide: blend_h over min(208, 16, 64) = 16 columns, of which all are kept
  assert.equal(at(0, 384 + 8), Math.fround(Math.fround(2 * 0.5) + Math.fround(3 * 0.5)));
});

test("spatial tiling: latents no larger than a tile make one decoder call; temporal tiles are tiled each", async () => {
  const calls: number[][] = [];
  await spatialTiledDecode(
    Tensor.f32([1, 1, 2, 32, 32], new Array<number>(2048).fill(1)),
    SPATIAL,
    constantDecoder(calls),
  );
  assert.deepEqual(calls, [[2, 32, 32]]);
  calls.length = 0;
  const video = await temporalTiledDecode(
    Tensor.f32([1, 1, 6, 8, 40], new Array<number>(6 * 8 * 40).fill(1)),
    VAE,
    constantDecoder(calls),
    SPATIAL,
  );
  assert.deepEqual(calls, [
    [5, 8, 32],
    [5, 8, 16],
    [3, 8, 32],
    [3, 8, 16],
  ]);
  assert.deepEqual(video.shape, [1, 1, 21, 64, 320]);
});
