/**
 * Decoded tiles kept between a job's section decodes: the windows FramePack decodes (plan.ts) share
 * latents, the tiles with exactly the same latents are looked up instead of decoded, and every
 * video is the same as without the cache. Also: a decode's frames are reported final in order.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DecodedTileCache } from "../../shared/framepack/decoded-tile-cache.js";
import { temporalTiledDecode, type TemporalTiling } from "../../shared/framepack/vae-tiling.js";
import { latentsDecodedAgain, planSections } from "../../shared/framepack/plan.js";
import type { SamplingType } from "../../shared/bundle/manifest.js";
import { narrow } from "../../shared/tensor/ops.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";

const VAE: TemporalTiling = {
  temporal_compression_ratio: 4,
  use_framewise_decoding: true,
  tile_sample_min_num_frames: 16,
  tile_sample_stride_num_frames: 12,
};

/** A causal stand-in decoder: each frame depends on its latent frame and on the tile's first (2 pixels). */
function decoder(calls: { n: number }): (tile: F32) => Promise<F32> {
  return async (tile) => {
    calls.n++;
    const t = tile.shape[2]!;
    const frames = (t - 1) * 4 + 1;
    const out = new Float32Array(frames * 2);
    for (let j = 0; j < frames; j++)
      for (let p = 0; p < 2; p++) out[j * 2 + p] = tile.data[Math.ceil(j / 4) * 2 + p]! * 1.5 + tile.data[p]! * 0.25;
    return new Tensor("float32", [1, 1, frames, 1, 2], out);
  };
}

/** 28 latent frames of 2 pixels, all different. */
const z = new Tensor(
  "float32",
  [1, 1, 28, 1, 2],
  Float32Array.from({ length: 56 }, (_, i) => Math.sin(i * 1.7) * 3),
);

/**
 * The windows a 3-section job decodes, as [start, length) of z: inverted generates from the end
 * (z = [start image, new2, new1, new0]), vanilla in order (z = [start image, new0, new1, new2]).
 */
const WINDOWS: Record<SamplingType, [number, number][]> = {
  inverted_anti_drifting: [
    [19, 9],
    [10, 18],
    [0, 19],
  ],
  vanilla: [
    [0, 10],
    [1, 18],
    [10, 18],
  ],
};

for (const [samplingType, decoderCalls] of [
  ["inverted_anti_drifting", [3, 3, 6]],
  ["vanilla", [3, 6, 4]],
] as const) {
  const windows = WINDOWS[samplingType];
  test(`${samplingType}: tiles of latents the next section decodes again are kept, looked up, and change no frame`, async () => {
    const plan = planSections({ samplingType, numFrames: 97, latentWindowSize: 9, hasEndImage: false });
    assert.deepEqual(
      plan.sections.map((s) => s.decode.latentFrames),
      windows.map(([, n]) => n),
    );
    const cache = new DecodedTileCache(1 << 30);
    const calls: number[] = [];
    for (const s of plan.sections) {
      const [from, n] = windows[s.index]!;
      const latents = narrow(z, 2, from, n);
      const plain = await temporalTiledDecode(latents, VAE, decoder({ n: 0 }));
      const counted = { n: 0 };
      const keep = latentsDecodedAgain(plan, s.index);
      const cached = await temporalTiledDecode(latents, VAE, decoder(counted), undefined, {
        cache,
        ...(keep !== null ? { keep } : {}),
      });
      assert.deepEqual([...cached.data], [...plain.data], `section ${s.index}`);
      calls.push(counted.n);
    }
    // Without the cache: 3 + 6 + 6 in both (a 1-latent-frame tail tile adds no frame and is never decoded).
    assert.deepEqual(calls, decoderCalls);
    assert.equal(latentsDecodedAgain(plan, plan.sections.length - 1), null);
  });
}

test("the cache keeps what fits, least recently used first out, and a failed decode is not kept", async () => {
  const tile = (v: number): F32 => new Tensor("float32", [1, 1, 1, 1, 4], new Float32Array(4).fill(v)); // 16 bytes
  const cache = new DecodedTileCache(32);
  const calls = { n: 0 };
  const decode = (t: F32) => () => {
    calls.n++;
    return Promise.resolve(t);
  };
  await cache.decode(tile(1), "", true, decode(tile(1)));
  await cache.decode(tile(2), "", true, decode(tile(2)));
  await cache.decode(tile(1), "", true, decode(tile(1))); // hit: 1 is now the most recent
  await cache.decode(tile(3), "", true, decode(tile(3))); // 2 goes
  assert.equal(cache.bytes, 32);
  calls.n = 0;
  await cache.decode(tile(1), "", true, decode(tile(1)));
  await cache.decode(tile(3), "", true, decode(tile(3)));
  assert.equal(calls.n, 0);
  await cache.decode(tile(2), "other salt", false, decode(tile(2)));
  assert.equal(calls.n, 1);
  await assert.rejects(
    cache.decode(tile(4), "", true, () => Promise.reject(new Error("gpu gone"))),
    /gpu gone/,
  );
  await cache.decode(tile(4), "", true, decode(tile(4)));
  assert.equal(calls.n, 2, "the failed tile is decoded again");
  assert.equal(new DecodedTileCache(0).maxBytes, 0);
});

test("a decode reports its frames final in order, each as it will be in the result", async () => {
  const latents = narrow(z, 2, 0, 19);
  const seen: [number, number[]][] = [];
  const video = await temporalTiledDecode(latents, VAE, decoder({ n: 0 }), undefined, {
    onFrames: (v, upTo) => seen.push([upTo, [...v.data.subarray(0, upTo * 2)]]),
  });
  assert.deepEqual(
    seen.map(([upTo]) => upTo),
    [13, 25, 37, 49, 61, 73],
  );
  for (const [upTo, frames] of seen) assert.deepEqual(frames, [...video.data.subarray(0, upTo * 2)]);
});
