/**
 * diffusers' framewise VAE encoding (temporalTiledEncode) with a stand-in encoder whose latents
 * name the tile and frame they came from, so the tiles asked for and the latents kept are visible.
 * (The numbers of the real encoder are checked by the video reference cases' video_latents.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../shared/tensor/tensor.js";
import { temporalTiledEncode, type Posterior } from "../../shared/framepack/vae-encode-tiling.js";

const HUNYUAN = { temporal_compression_ratio: 4, tile_sample_min_num_frames: 16, tile_sample_stride_num_frames: 12 };

/** A posterior of (count - 1) / 4 + 1 latents of 1 channel and 1 pixel: mean = 1000 * first + latent, std = -mean. */
function standIn(calls: [number, number][]) {
  return async (first: number, count: number): Promise<Posterior> => {
    calls.push([first, count]);
    const n = (count - 1) / 4 + 1;
    const mean = Float32Array.from({ length: n }, (_, i) => 1000 * first + i);
    return {
      mean: new Tensor("float32", [1, 1, n, 1, 1], mean),
      std: new Tensor(
        "float32",
        [1, 1, n, 1, 1],
        mean.map((x) => -x),
      ),
    };
  };
}

test("up to 16 frames: one encoder call", async () => {
  const calls: [number, number][] = [];
  const p = await temporalTiledEncode(13, HUNYUAN, standIn(calls));
  assert.deepEqual(calls, [[0, 13]]);
  assert.deepEqual([...p.mean.data], [0, 1, 2, 3]);
});

test("49 frames: tiles of 17 every 12, a later tile's first latent replaced by the one before it", async () => {
  const calls: [number, number][] = [];
  const p = await temporalTiledEncode(49, HUNYUAN, standIn(calls));
  // The tile at 48 would hold one frame, whose one latent is dropped: diffusers encodes it for nothing.
  assert.deepEqual(calls, [
    [0, 17],
    [12, 17],
    [24, 17],
    [36, 13],
  ]);
  // Tile 0 keeps 4; each later one keeps 3, the first of them the previous tile's last latent.
  assert.deepEqual([...p.mean.data], [0, 1, 2, 3, 4, 12002, 12003, 12004, 24002, 24003, 24004, 36002, 36003]);
  assert.deepEqual(
    [...p.std.data],
    [...p.mean.data].map((x) => -x),
  );
  assert.deepEqual(p.mean.shape, [1, 1, 13, 1, 1]);
});

test("105 frames (Studio's 27 latents) and frame counts that are not 4k + 1", async () => {
  const calls: [number, number][] = [];
  const p = await temporalTiledEncode(105, HUNYUAN, standIn(calls));
  assert.equal(p.mean.shape[2], 27);
  assert.ok(calls.every(([, n]) => (n - 1) % 4 === 0 && n <= 17));
  await assert.rejects(temporalTiledEncode(48, HUNYUAN, standIn([])), RangeError);
});

test("tiles blending over more than one latent are refused (mean and std do not blend as the log-variance)", async () => {
  const vae = { ...HUNYUAN, tile_sample_stride_num_frames: 8 };
  await assert.rejects(temporalTiledEncode(49, vae, standIn([])), /blend over 2 latents/);
});
