/** Output trimming and diffusers' postprocess to uint8. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { roundHalfEven, trimFrameCount, videoToUint8Frames } from "../../shared/framepack/frames.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { listCases, loadCase } from "../support/reference.js";

test("trim to (n - 1) // 4 * 4 + 1", () => {
  assert.equal(trimFrameCount(109, 4), 109);
  assert.equal(trimFrameCount(110, 4), 109);
  assert.equal(trimFrameCount(112, 4), 109);
  assert.equal(trimFrameCount(1, 4), 1);
  assert.throws(() => trimFrameCount(0, 4), RangeError);
});

test("numpy rounds half to even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, 127.5, 128.5, 2.4999, -0.5].map(roundHalfEven), [0, 2, 2, 128, 128, 2, -0]);
});

test("video [1, 3, T, H, W] -> uint8 [T, H, W, 3] with clamping and half-even rounding", () => {
  // x = 0 -> 0.5 * 255 = 127.5 -> 128 (even); x = 1/255 - 1 -> 0.5 + ... checks channel order too
  const v = Tensor.f32([1, 3, 2, 1, 2], [0, -1, 2, -2, 0.5, 1, Math.fround(-0.99), 0.1, -3, 3, 0, 0]);
  const out = videoToUint8Frames(v, 2);
  assert.deepEqual(out.shape, [2, 1, 2, 3]);
  const f = Math.fround;
  const px = (x: number): number => roundHalfEven(f(Math.min(1, Math.max(0, f(f(x * 0.5) + 0.5))) * 255));
  // frame 0 pixel 0: r = v[0][0][0] = 0, g = v[1][0][0] = 0.5, b = v[2][0][0] = -3
  assert.deepEqual(
    [...out.data],
    [px(0), px(0.5), px(-3), px(-1), px(1), px(3), px(2), px(-0.99), px(0), px(-2), px(0.1), px(0)],
  );
  assert.equal(px(0), 128);
  assert.equal(videoToUint8Frames(v, 1).shape[0], 1);
});

test("the demo's frames (unipc): clamp(-1, 1) * 127.5 + 127.5, truncated to uint8", async () => {
  const { videoToUint8FramesDemo, frameConverterFor, videoToUint8Frames } =
    await import("../../shared/framepack/frames.js");
  const { Tensor } = await import("../../shared/tensor/tensor.js");
  const vals = [-2, -1, -0.999, 0, 0.5, 0.99999, 1, 3, Number.NaN, 0.0039215];
  const v = Tensor.f32([1, 3, 1, 1, vals.length], [...vals, ...vals, ...vals]);
  const out = videoToUint8FramesDemo(v, 1);
  const f = Math.fround;
  const want = vals.map((x) =>
    Number.isNaN(x) ? 0 : Math.trunc(f(f(Math.min(1, Math.max(-1, f(x))) * 127.5) + 127.5)),
  );
  assert.deepEqual(
    [...out.data].filter((_, i) => i % 3 === 0),
    want,
  );
  assert.deepEqual(want.slice(0, 8), [0, 0, 0, 127, 191, 254, 255, 255]);
  assert.equal(frameConverterFor("unipc"), videoToUint8FramesDemo);
  assert.equal(frameConverterFor("flow_match_euler"), videoToUint8Frames);
});

test("reference frames have the planned shape", () => {
  for (const name of listCases()) {
    const { params, tensors } = loadCase(name);
    assert.deepEqual(tensors.get("frames_uint8")!.shape, params.frames_shape);
  }
});

test("the plane converters equal their formulas on every tie, NaN, infinities and random values", async () => {
  const { diffusersPlaneToUint8, demoPlaneToUint8 } = await import("../../shared/framepack/frames.js");
  const f = Math.fround;
  const values: number[] = [Number.NaN, Infinity, -Infinity, -0, 0, 1, -1];
  // x whose diffusers value lands on or next to k + 0.5, and the demo's k exactly.
  for (let k = 0; k <= 255; k++)
    for (const t of [(k + 0.5) / 255, k / 255, (k + 0.5) / 127.5]) {
      const x = f(t * 2 - 1);
      values.push(x, f(x + 2 ** -23), f(x - 2 ** -23));
    }
  for (let i = 0; i < 20000; i++) values.push(f(Math.sin(i * 12.9898) * 1.2));
  const src = Float32Array.from(values);
  const got = new Uint8Array(src.length * 3);
  diffusersPlaneToUint8(src, got, 1);
  const diffusers = (x: number): number => {
    const v = roundHalfEven(f(Math.min(1, Math.max(0, f(f(x * 0.5) + 0.5))) * 255));
    return Number.isNaN(v) ? 0 : v;
  };
  assert.deepEqual(
    [...src].map((_, i) => got[i * 3 + 1]),
    [...src].map(diffusers),
  );
  demoPlaneToUint8(src, got, 2);
  const demo = (x: number): number =>
    Number.isNaN(x) ? 0 : Math.trunc(f(f(Math.min(1, Math.max(-1, x)) * 127.5) + 127.5));
  assert.deepEqual(
    [...src].map((_, i) => got[i * 3 + 2]),
    [...src].map(demo),
  );
});
