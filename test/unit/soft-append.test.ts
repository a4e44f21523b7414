/** _soft_append and torch.linspace's float32 values. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { fadeWeights, linspaceF32, softAppend } from "../../shared/framepack/soft-append.js";
import { Tensor } from "../../shared/tensor/tensor.js";

test("linspace: exact steps give exact values; the two halves count from either end", () => {
  assert.deepEqual([...fadeWeights(5)], [1, 0.75, 0.5, 0.25, 0]);
  assert.deepEqual([...fadeWeights(1)], [1]);
  assert.deepEqual(
    [...fadeWeights(33)],
    Array.from({ length: 33 }, (_, i) => 1 - i / 32),
  );
  const f = Math.fround;
  // 25 frames (window 7): step -1/24 is inexact. Elements 0..15 come from two 8-lane vectors, so
  // element 13 (past halfway) is (start + step*8) + 5*step, not end - step*11; 16..24 are scalar.
  const w = linspaceF32(1, 0, 25);
  const step = f(-1 / 24);
  assert.equal(w[0], 1);
  assert.equal(w[24], 0);
  assert.equal(w[3], f(1 + f(3 * step)));
  assert.equal(w[13], f(f(1 + f(step * 8)) + f(5 * step)));
  assert.notEqual(w[13], f(0 - f(step * 11)));
  assert.equal(w[17], f(0 - f(step * 7)));
});

test("soft append blends history's tail into current's head", () => {
  const h = Tensor.f32([1, 1, 4, 1, 2], [1, 1, 2, 2, 3, 3, 4, 4]);
  const c = Tensor.f32([1, 1, 3, 1, 2], [10, 10, 20, 20, 30, 30]);
  const out = softAppend(h, c, 2);
  // frames: h0, h1, 1*h2 + 0*c0, 0*h3 + 1*c1, c2
  assert.deepEqual(out.shape, [1, 1, 5, 1, 2]);
  assert.deepEqual([...out.data], [1, 1, 2, 2, 3, 3, 20, 20, 30, 30]);
  const mid = softAppend(h, c, 3);
  // weights 1, 0.5, 0 over h1..h3 and c0..c2
  assert.deepEqual([...mid.data], [1, 1, 2, 2, 11.5, 11.5, 30, 30]);
  assert.deepEqual([...softAppend(h, c, 0).data], [...h.data, ...c.data]);
  assert.throws(() => softAppend(h, c, 4), RangeError);
});

test("soft append with 3 overlap frames uses weights 1, 0.5, 0", () => {
  const h = Tensor.f32([1, 1, 3, 1, 1], [1, 2, 3]);
  const c = Tensor.f32([1, 1, 4, 1, 1], [10, 20, 30, 40]);
  assert.deepEqual([...softAppend(h, c, 3).data], [1, 11, 30, 40]);
});
