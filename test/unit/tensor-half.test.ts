/** float16 / bfloat16 conversions against an independent implementation and hand-checked values. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { getFloat16, setFloat16 } from "@petamoriken/float16";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  fromBFloat16,
  fromFloat16,
  toBFloat16,
  toFloat16,
} from "../../shared/tensor/half.js";

const dv = new DataView(new ArrayBuffer(4));
const f32FromBits = (b: number): number => {
  dv.setUint32(0, b >>> 0);
  return dv.getFloat32(0);
};

test("every float16 pattern decodes as @petamoriken/float16 does and re-encodes to itself", () => {
  for (let h = 0; h < 0x10000; h++) {
    dv.setUint16(0, h);
    const want = getFloat16(dv, 0);
    const got = f16BitsToF32(h);
    if (Number.isNaN(want)) {
      assert.ok(Number.isNaN(got));
      continue;
    }
    assert.ok(Object.is(got, want), `0x${h.toString(16)}: ${got} != ${want}`);
    assert.equal(f32ToF16Bits(got), h);
  }
});

test("float32 -> float16 rounds to nearest even, like @petamoriken/float16, over a sweep of float32 patterns", () => {
  // Every 4099th pattern plus the exact ties around each half ulp.
  const check = (x: number): void => {
    setFloat16(dv, 0, x);
    const want = dv.getUint16(0);
    const got = f32ToF16Bits(x);
    if (Number.isNaN(x)) return;
    assert.equal(got, want, `${x}: 0x${got.toString(16)} != 0x${want.toString(16)}`);
  };
  for (let b = 0; b < 0x100000000; b += 4099) check(f32FromBits(b));
  for (let h = 0; h < 0x7c00; h++) {
    const lo = f16BitsToF32(h);
    const hi = f16BitsToF32(h + 1);
    check(Math.fround((lo + hi) / 2));
    check(-Math.fround((lo + hi) / 2));
  }
});

test("float16 edge values", () => {
  assert.equal(f32ToF16Bits(65504), 0x7bff);
  assert.equal(f32ToF16Bits(65520), 0x7c00); // the tie above the largest half rounds to infinity
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001);
  assert.equal(f32ToF16Bits(2 ** -25), 0x0000); // tie to even (zero)
  assert.equal(f32ToF16Bits(1.5 * 2 ** -25), 0x0001);
  assert.equal(f32ToF16Bits(-0), 0x8000);
  assert.equal(f32ToF16Bits(NaN), 0x7e00);
  assert.equal(f32ToF16Bits(-Infinity), 0xfc00);
});

test("bfloat16: round to nearest even on the upper 16 bits, canonical NaN", () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(f32ToBf16Bits(f32FromBits(0x3f808000)), 0x3f80); // tie, even stays
  assert.equal(f32ToBf16Bits(f32FromBits(0x3f818000)), 0x3f82); // tie, odd rounds up
  assert.equal(f32ToBf16Bits(f32FromBits(0x3f808001)), 0x3f81);
  assert.equal(f32ToBf16Bits(f32FromBits(0x7f7fffff)), 0x7f80); // max float rounds to infinity
  assert.equal(f32ToBf16Bits(NaN), 0x7fc0);
  for (let h = 0; h < 0x10000; h++) {
    const v = bf16BitsToF32(h);
    if (!Number.isNaN(v)) assert.equal(f32ToBf16Bits(v), h);
  }
});

test("array conversions round-trip", () => {
  const x = Float32Array.from([0, -1.5, 3.140625, 65504, -(2 ** -24)]);
  assert.deepEqual(fromFloat16(toFloat16(x)), x);
  const y = Float32Array.from([0, -1.5, 3.140625, 1e30]);
  assert.deepEqual(
    fromBFloat16(toBFloat16(y)),
    Float32Array.from([0, -1.5, 3.140625, bf16BitsToF32(f32ToBf16Bits(1e30))]),
  );
});
