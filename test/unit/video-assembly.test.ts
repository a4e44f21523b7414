/** Soft-append bookkeeping and framewise VAE tiling, against direct computations. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { cat, narrow } from "../../shared/tensor/ops.js";
import { softAppend } from "../../shared/framepack/soft-append.js";
import {
  demoPlaneToUint8,
  diffusersPlaneToUint8,
  videoToUint8Frames,
  videoToUint8FramesDemo,
} from "../../shared/framepack/frames.js";
import { VideoAccumulator } from "../../shared/framepack/video-accumulator.js";
import { softAppendedFrames, streamable } from "../../shared/framepack/video-stream.js";
import { temporalTiledDecode } from "../../shared/framepack/vae-tiling.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";

const gen = new TorchGenerator(99n);
const randomVideo = (frames: number): F32 => {
  const t = gen.randn([1, 3, frames, 4, 6]);
  return new Tensor(
    "float32",
    t.shape,
    t.data.map((x) => Math.tanh(x)),
  );
};

for (const mode of ["vanilla", "inverted_anti_drifting"] as const) {
  test(`the accumulator equals soft-appending whole float videos (${mode})`, async () => {
    const overlap = 9;
    const sections = [randomVideo(13), randomVideo(25), randomVideo(25), randomVideo(29)];
    let whole: F32 | null = null;
    const acc = new VideoAccumulator(mode, overlap);
    for (const s of sections) {
      whole = whole === null ? s : mode === "vanilla" ? softAppend(whole, s, overlap) : softAppend(s, whole, overlap);
      acc.add(s);
    }
    const expected = videoToUint8Frames(whole!, whole!.shape[2]!);
    const got = acc.finish();
    assert.deepEqual(got.shape, expected.shape);
    assert.deepEqual(got.data, expected.data);
    assert.equal(acc.finish(10).shape[0], 10);
    const yielding = new VideoAccumulator(mode, overlap);
    for (const s of sections) await yielding.addAsync(s);
    assert.deepEqual(yielding.finish().data, expected.data, "addAsync gives the same frames");
  });

  test(`streamed frames equal the accumulator's, frame for frame, with a limit (${mode})`, () => {
    const concat = (frames: Iterable<Uint8Array>): Uint8Array => {
      const parts = [...frames];
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) (out.set(p, at), (at += p.length));
      return out;
    };
    for (const [overlap, lengths, converter] of [
      [9, [13, 25, 25, 29], diffusersPlaneToUint8],
      [9, [9, 18, 9], demoPlaneToUint8],
      [0, [5, 7, 3], diffusersPlaneToUint8],
      [4, [30], diffusersPlaneToUint8],
    ] as const) {
      const sections = lengths.map((n) => randomVideo(n));
      assert.ok(streamable(lengths, overlap));
      const acc = new VideoAccumulator(mode, overlap, converter);
      for (const s of sections) acc.add(s);
      const all = acc.finish();
      assert.deepEqual(concat(softAppendedFrames(sections, mode, overlap, converter)), all.data, `${lengths}`);
      const limited = concat(softAppendedFrames(sections, mode, overlap, converter, 10));
      assert.deepEqual(limited, acc.finish(10).data, `${lengths}, first 10 frames`);
    }
  });

  test(`the accumulator equals whole-video soft-append with the demo's frames, no overlap or a section of exactly the overlap (${mode})`, () => {
    for (const [overlap, lengths] of [
      [0, [5, 7, 3]],
      [5, [5, 5, 11, 5]],
    ] as const) {
      const sections = lengths.map((n) => randomVideo(n));
      let whole: F32 | null = null;
      const acc = new VideoAccumulator(mode, overlap, demoPlaneToUint8);
      for (const s of sections) {
        whole = whole === null ? s : mode === "vanilla" ? softAppend(whole, s, overlap) : softAppend(s, whole, overlap);
        acc.add(s);
      }
      assert.deepEqual(acc.finish().data, videoToUint8FramesDemo(whole!, whole!.shape[2]!).data, `overlap ${overlap}`);
    }
  });
}

test("sections whose cross-fades would share a frame are not streamed", () => {
  assert.equal(streamable([5, 5, 11, 5], 5), false, "a middle section of exactly the overlap");
  assert.equal(streamable([33, 66, 69], 33), true, "FramePack's: 8w-3 frames against 4w-3");
  assert.equal(streamable([4, 10], 5), false, "an end section shorter than the overlap");
  assert.equal(streamable([], 5), false);
  assert.throws(
    () => [
      ...softAppendedFrames([randomVideo(5), randomVideo(5), randomVideo(5)], "vanilla", 5, diffusersPlaneToUint8),
    ],
    /not streamable/,
  );
});

test("soft append cross-fades linearly over the overlap", () => {
  const ones = new Tensor("float32", [1, 1, 3, 1, 1], Float32Array.of(1, 1, 1));
  const zeros = new Tensor("float32", [1, 1, 3, 1, 1], Float32Array.of(0, 0, 0));
  assert.deepEqual([...softAppend(ones, zeros, 3).data], [1, 0.5, 0]);
  assert.deepEqual([...softAppend(ones, zeros, 0).data], [1, 1, 1, 0, 0, 0]);
});

const vae = {
  latent_channels: 1,
  scaling_factor: 1,
  spatial_compression_ratio: 1,
  temporal_compression_ratio: 4,
  use_framewise_decoding: true,
  tile_sample_min_num_frames: 16,
  tile_sample_stride_num_frames: 12,
};

/** A causal "decoder" whose output frame values identify the latent frame and tile they came from. */
async function fakeDecode(tile: F32): Promise<F32> {
  const t = tile.shape[2]!;
  const out = new Float32Array((t - 1) * 4 + 1);
  for (let i = 0; i < out.length; i++) out[i] = tile.data[Math.ceil(i / 4)]! + t * 1000;
  return new Tensor("float32", [1, 1, out.length, 1, 1], out);
}

test("framewise decoding tiles 5 latent frames with stride 3 and blends 4 frames, as diffusers", async () => {
  const frames = 10;
  const z = new Tensor(
    "float32",
    [1, 1, frames, 1, 1],
    Float32Array.from({ length: frames }, (_, i) => i),
  );
  const seen: number[] = [];
  const out = await temporalTiledDecode(z, vae, async (tile) => {
    seen.push(tile.shape[2]!);
    return fakeDecode(tile);
  });
  // diffusers also decodes the 1-frame tile at 9; its only frame is dropped, so it is not asked for.
  assert.deepEqual(seen, [5, 5, 4]);
  assert.deepEqual(out.shape, [1, 1, (frames - 1) * 4 + 1, 1, 1]);
  // Independent computation of diffusers' _temporal_tiled_decode for these tiles.
  const tiles = await Promise.all(
    [0, 3, 6, 9].map(async (i) => {
      const d = await fakeDecode(narrow(z, 2, i, Math.min(5, frames - i)));
      return i > 0 ? narrow(d, 2, 1, d.shape[2]! - 1) : d;
    }),
  );
  const parts: F32[] = [];
  tiles.forEach((tile, i) => {
    if (i === 0) return parts.push(narrow(tile, 2, 0, Math.min(13, tile.shape[2]!)));
    const prev = tiles[i - 1]!;
    const ext = Math.min(prev.shape[2]!, tile.shape[2]!, 4);
    const b = new Float32Array(tile.data);
    for (let x = 0; x < ext; x++)
      b[x] = Math.fround(
        Math.fround(prev.data[prev.shape[2]! - ext + x]! * Math.fround(1 - x / ext)) +
          Math.fround(b[x]! * Math.fround(x / ext)),
      );
    return parts.push(narrow(new Tensor("float32", tile.shape, b), 2, 0, Math.min(12, tile.shape[2]!)));
  });
  assert.deepEqual([...out.data], [...narrow(cat(parts, 2), 2, 0, 37).data]);
});

test("short latents decode in one call, and framewise decoding can be off", async () => {
  const z4 = new Tensor("float32", [1, 1, 4, 1, 1], Float32Array.of(1, 2, 3, 4));
  let calls = 0;
  await temporalTiledDecode(z4, vae, async (t) => (calls++, fakeDecode(t)));
  assert.equal(calls, 1);
  const z9 = new Tensor("float32", [1, 1, 9, 1, 1], new Float32Array(9));
  calls = 0;
  await temporalTiledDecode(z9, { ...vae, use_framewise_decoding: false }, async (t) => (calls++, fakeDecode(t)));
  assert.equal(calls, 1);
});
