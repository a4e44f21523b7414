/** The torch-compatible generator against the noise diffusers drew in every reference case. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { TorchGenerator, drawsForRandn } from "../../shared/sampler/torch-rng.js";
import { MT19937 } from "../../shared/sampler/mt19937.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import { REFERENCE_CASES, loadCaseTensors, refTensor } from "../support/reference.js";

test("mt19937 matches the standard sequence (seed 5489: 10000th output 4123659995)", () => {
  const mt = new MT19937(5489n);
  mt.skip(9999);
  assert.equal(mt.nextUint32(), 4123659995);
});

test("only the low 32 bits of a seed seed the engine, as in torch", () => {
  const a = new MT19937(7n);
  const b = new MT19937(7n + (1n << 40n));
  for (let i = 0; i < 5; i++) assert.equal(a.nextUint32(), b.nextUint32());
});

for (const name of REFERENCE_CASES) {
  test(`${name}: every section's noise matches torch within 1e-6`, () => {
    const { params, tensors } = loadCaseTensors(name);
    const g = new TorchGenerator(BigInt(params["seed"] as number));
    // diffusers' order: start image posterior, end image posterior, then each section's noise.
    g.randn(refTensor(name, "image_latents").shape);
    if (tensors.has("last_image_latents")) g.randn(refTensor(name, "last_image_latents").shape);
    let k = 0;
    for (; tensors.has(`section${k}.noise`); k++) {
      const want = toFloat64(refTensor(name, `section${k}.noise`));
      const got = g.randn(refTensor(name, `section${k}.noise`).shape).data;
      let max = 0;
      for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(got[i]! - want[i]!));
      assert.ok(max <= 1e-6, `section ${k}: max |d| ${max}`);
    }
    assert.ok(k >= 2);
  });
}

test("the generator's position predicts draws, so a section's noise can be reproduced after a skip", () => {
  const a = new TorchGenerator(3n);
  a.randn([1, 4, 1, 8, 8]);
  const first = a.randn([1, 4, 5, 8, 8]);
  const atSecond = a.position;
  const second = a.randn([1, 4, 5, 8, 8]);
  assert.equal(atSecond, drawsForRandn(256) + drawsForRandn(1280));
  const b = new TorchGenerator(3n);
  b.skip(atSecond);
  assert.deepEqual(b.randn([1, 4, 5, 8, 8]).data, second.data);
  assert.notDeepEqual(first.data, second.data);
});

test("sizes that are not a multiple of 16 redraw the tail block", () => {
  const g = new TorchGenerator(0n);
  const t = g.randn([17]);
  assert.equal(g.position, 33);
  assert.ok(t.data.every((v) => Number.isFinite(v)));
});
