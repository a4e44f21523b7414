/** Section previews: block-averaged before conversion, each sampler's conversion, even sides. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { videoToUint8Frames, videoToUint8FramesDemo } from "../../shared/framepack/frames.js";
import { previewBlock, previewFramesAsync } from "../../shared/framepack/preview-frames.js";

function video(t: number, h: number, w: number): F32 {
  const data = new Float32Array(3 * t * h * w);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37) * 1.2;
  return new Tensor("float32", [1, 3, t, h, w], data);
}

/** The k x k block means of video, cropped to oh x ow, as a [1, 3, T, oh, ow] video. */
function blockMeans(v: F32, k: number, oh: number, ow: number): F32 {
  const [, , t, h, w] = v.shape as [number, number, number, number, number];
  const out = new Float32Array(3 * t * oh * ow);
  for (let p = 0; p < 3 * t; p++)
    for (let y = 0; y < oh; y++)
      for (let x = 0; x < ow; x++) {
        let s = 0;
        for (let dy = 0; dy < k; dy++)
          for (let dx = 0; dx < k; dx++) s += v.data[p * h * w + (y * k + dy) * w + x * k + dx]!;
        out[(p * oh + y) * ow + x] = s / (k * k);
      }
  return new Tensor("float32", [1, 3, t, oh, ow], out);
}

test("the block is the largest whole factor that keeps the longer side at the preview's size or above", () => {
  assert.equal(previewBlock(640, 640, 320), 2);
  assert.equal(previewBlock(416, 960, 320), 3);
  assert.equal(previewBlock(608, 640, 320), 2);
  assert.equal(previewBlock(320, 240, 320), 1);
  assert.equal(previewBlock(64, 48, 320), 1);
});

/** Block means of 2 (the k = 2 path) and 3 (the general loop): the same as averaging first, then converting. */
for (const [k, frames, h, w, oh, ow] of [
  [2, 3, 64, 48, 32, 24],
  [3, 2, 96, 60, 32, 20],
] as const)
  test(`a large video is averaged over ${k}x${k} blocks and then converted as the job's frames are`, async () => {
    const v = video(frames, h, w);
    const got = await previewFramesAsync(v, frames, 32, undefined);
    assert.deepEqual(got.shape, [frames, oh, ow, 3]);
    const want = videoToUint8Frames(blockMeans(v, k, oh, ow), frames);
    let off = 0;
    for (let i = 0; i < want.data.length; i++) off = Math.max(off, Math.abs(got.data[i]! - want.data[i]!));
    // Float32 sums in another order: a value on a rounding edge may land one step over.
    assert.ok(off <= 1, `max |d| ${off}`);
  });

test("a video at the preview's size or below is converted as it is, with the sampler's conversion", async () => {
  const v = video(4, 32, 48);
  assert.deepEqual((await previewFramesAsync(v, 3, 320, undefined)).data, videoToUint8Frames(v, 3).data);
  assert.deepEqual((await previewFramesAsync(v, 4, 320, "unipc")).data, videoToUint8FramesDemo(v, 4).data);
});

test("averaged sides are rounded down to even numbers (H.264)", async () => {
  const got = await previewFramesAsync(video(1, 112, 336), 1, 100, undefined);
  // k = 3: 112 / 3 = 37.3 -> 36, 336 / 3 = 112.
  assert.deepEqual(got.shape, [1, 36, 112, 3]);
});

test("a tensor that is not a [1, 3, T, H, W] video is refused", async () => {
  await assert.rejects(
    previewFramesAsync(new Tensor("float32", [3, 2, 4, 4], new Float32Array(96)), 2, 2, undefined),
    RangeError,
  );
});
