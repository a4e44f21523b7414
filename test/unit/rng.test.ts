/** The torch-compatible generator against the noise diffusers drew in every reference case. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { TorchGenerator, drawsForRandn, normalizeSeed } from "../../shared/sampler/torch-rng.js";
import { MT19937 } from "../../shared/sampler/mt19937.js";
import { fma32, logf32, sincosf32 } from "../../shared/sampler/cephes-f32.js";
import { maxAbsDiff } from "../../shared/tensor/ops.js";
import { FarmError } from "../../shared/errors.js";
import { listCases, loadCase } from "../support/reference.js";

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

test("seeds: torch's range [-2^63, 2^64), negatives as two's complement", () => {
  assert.equal(normalizeSeed(-1), 2n ** 64n - 1n);
  assert.equal(normalizeSeed(2n ** 64n - 1n), 2n ** 64n - 1n);
  assert.equal(normalizeSeed(-(2n ** 63n)), 2n ** 63n);
  for (const bad of [2n ** 64n, -(2n ** 63n) - 1n]) {
    assert.throws(
      () => normalizeSeed(bad),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT",
    );
  }
  assert.throws(() => normalizeSeed(1.5), FarmError);
  assert.deepEqual(new TorchGenerator(-1).randn([16]).data, new TorchGenerator(0xffffffffn).randn([16]).data);
});

for (const name of listCases()) {
  test(`${name}: every section's noise is bit-identical to torch's`, () => {
    const { params, tensors } = loadCase(name);
    const g = new TorchGenerator(params.seed);
    // diffusers' order: start image posterior, end image posterior, then each section's noise.
    g.randn(tensors.get("image_latents")!.shape);
    if (params.last_image !== null) g.randn(tensors.get("last_image_latents")!.shape);
    let k = 0;
    for (; tensors.has(`section${k}.noise`); k++) {
      const want = tensors.get(`section${k}.noise`)!;
      const got = g.randn(want.shape);
      const d = maxAbsDiff(got, want);
      assert.equal(d, 0, `section ${k}: max |d| ${d}`);
    }
    assert.ok(k >= 2);
  });
}

test("fma32 rounds once: ties resolved by the part of a*b+c below double precision", () => {
  // 1 + 2^-24 is a float32 tie; a tiny extra product term must push it up, a negative one down.
  const eps = 2 ** -60;
  assert.equal(fma32(1 + 2 ** -23, 2 ** -24 + 0, 1), Math.fround(1 + 2 ** -23)); // exact sum 1+2^-24+2^-47 rounds up
  assert.equal(fma32(2 ** -24, 1, 1), 1); // exact tie: to even
  assert.equal(fma32(2 ** -24 + 2 ** -47, 1, 1), Math.fround(1 + 2 ** -23));
  assert.equal(fma32(Math.fround(1 + 2 ** -23), 2 ** -30, -eps), Math.fround(2 ** -30 * (1 + 2 ** -23)));
  assert.equal(fma32(3, 5, 7), 22);
});

test("Cephes log/sincos stay within a few float32 ulps of the true values", () => {
  for (let i = 1; i <= 1000; i++) {
    const x = Math.fround(i / 1000);
    assert.ok(Math.abs(logf32(x) - Math.log(x)) <= 4e-7 * Math.max(1, Math.abs(Math.log(x))), `log ${x}`);
    const th = Math.fround((2 * Math.PI * i) / 1000);
    const [s, c] = sincosf32(th);
    assert.ok(Math.abs(s - Math.sin(th)) < 3e-7 && Math.abs(c - Math.cos(th)) < 3e-7, `sincos ${th}`);
  }
  assert.ok(Number.isNaN(logf32(0)));
});

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
  // The first element comes from the first full block, so it equals a 16-element draw's first.
  assert.equal(t.data[0], new TorchGenerator(0n).randn([16]).data[0]);
});

test("fewer than 16 elements: double Box-Muller, two draws per uniform, second normal cached across calls", () => {
  const g = new TorchGenerator(0n);
  const a = g.randn([3]);
  // Two normals per pair of uniforms (4 draws); the third leaves a cached sine for the next call.
  assert.equal(g.position, 8);
  const b = g.randn([1]);
  assert.equal(g.position, 8);
  const h = new TorchGenerator(0n);
  const both = h.randn([4]);
  assert.deepEqual([...a.data, ...b.data], [...both.data]);
  // The first value from the formula: u = 53-bit uniforms from (hi, lo) draw pairs.
  const mt = new MT19937(0n);
  const u = (): number => {
    const hi = mt.nextUint32();
    const lo = mt.nextUint32();
    return ((hi & 0x1fffff) * 2 ** 32 + lo) / 2 ** 53;
  };
  const u1 = u();
  const u2 = u();
  assert.equal(a.data[0], Math.fround(Math.sqrt(-2 * Math.log1p(-u2)) * Math.cos(2 * Math.PI * u1)));
});
