/** narrow / cat / split / elementwise helpers / parity metrics on small hand-made tensors. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../shared/tensor/tensor.js";
import {
  add,
  cat,
  divScalar,
  map,
  maxAbsDiff,
  mul,
  narrow,
  relL2,
  scale,
  split,
  sub,
} from "../../shared/tensor/ops.js";
import { toF32, toFloat64 } from "../../shared/tensor/convert.js";
import { toFloat16 } from "../../shared/tensor/half.js";

const iota = (shape: number[]): Tensor<"float32"> => {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.f32(
    shape,
    Array.from({ length: n }, (_, i) => i),
  );
};

test("narrow takes a slab along any dim", () => {
  const t = iota([2, 3, 4]);
  assert.deepEqual([...narrow(t, 1, 1, 2).data], [4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23]);
  assert.deepEqual(narrow(t, 1, 1, 2).shape, [2, 2, 4]);
  assert.deepEqual([...narrow(t, 2, 3, 1).data], [3, 7, 11, 15, 19, 23]);
  assert.deepEqual(narrow(t, 0, 2, 0).shape, [0, 3, 4]);
  assert.throws(() => narrow(t, 1, 2, 2), RangeError);
  assert.throws(() => narrow(t, 3, 0, 1), RangeError);
});

test("split then cat is the identity, and cat checks shapes", () => {
  const t = iota([2, 5, 3]);
  const parts = split(t, 1, [1, 2, 2]);
  assert.deepEqual(
    parts.map((p) => p.shape[1]),
    [1, 2, 2],
  );
  assert.deepEqual(cat(parts, 1).data, t.data);
  assert.deepEqual(cat([narrow(t, 0, 0, 1), narrow(t, 0, 1, 1)], 0).data, t.data);
  assert.throws(() => split(t, 1, [1, 1]), RangeError);
  assert.throws(() => cat([iota([1, 2]), iota([2, 2])], 1), RangeError);
  assert.throws(() => cat([], 0), RangeError);
});

test("elementwise helpers round to float32", () => {
  const a = Tensor.f32([3], [1, 2, 0.1]);
  const b = Tensor.f32([3], [0.5, -2, 0.2]);
  assert.deepEqual([...add(a, b).data], [1.5, 0, Math.fround(Math.fround(0.1) + Math.fround(0.2))]);
  assert.deepEqual([...sub(a, b).data], [0.5, 4, Math.fround(Math.fround(0.1) - Math.fround(0.2))]);
  assert.deepEqual([...mul(a, b).data], [0.5, -4, Math.fround(Math.fround(0.1) * Math.fround(0.2))]);
  assert.deepEqual([...scale(a, 2).data], [2, 4, Math.fround(0.2)]);
  assert.deepEqual(
    [...divScalar(a, 0.476986).data],
    [...a.data].map((v) => Math.fround(v / Math.fround(0.476986))),
  );
  assert.deepEqual([...map(a, (x) => x * 3).data], [3, 6, Math.fround(Math.fround(0.1) * 3)]);
  assert.throws(() => add(a, Tensor.f32([2], [1, 2])), RangeError);
});

test("maxAbsDiff and relL2 compare any float dtypes", () => {
  const a = Tensor.f32([4], [1, 2, 3, 4]);
  const b = Tensor.f32([4], [1, 2, 3, 5]);
  assert.equal(maxAbsDiff(a, b), 1);
  assert.equal(maxAbsDiff(a, a), 0);
  assert.ok(Math.abs(relL2(a, b) - 1 / Math.sqrt(1 + 4 + 9 + 25)) < 1e-15);
  assert.equal(relL2(Tensor.zeros([2]), Tensor.zeros([2])), 0);
  assert.equal(relL2(Tensor.f32([1], [1]), Tensor.zeros([1])), Infinity);
  assert.ok(Number.isNaN(maxAbsDiff(Tensor.f32([1], [NaN]), Tensor.f32([1], [0]))));
  const half = new Tensor("float16", [4], toFloat16(a.data));
  assert.equal(maxAbsDiff(half, a), 0);
  assert.deepEqual(toF32(half).data, a.data);
  assert.deepEqual([...toFloat64(Tensor.i64([2], [3, -4]))], [3, -4]);
  assert.throws(() => maxAbsDiff(a, Tensor.zeros([2, 2])), RangeError);
});
