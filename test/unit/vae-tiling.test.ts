/**
 * Temporal tiled decoding with a fake decoder whose output is known in closed form, so the tiled
 * result can be checked against an independent frame-by-frame computation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { temporalTiledDecode, type TemporalTiling } from "../../shared/framepack/vae-tiling.js";
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
    assert.deepEqual(
      calls.map((c) => c[0]),
      Array.from({ length: Math.ceil(frames / 3) }, (_, k) => 3 * k),
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
