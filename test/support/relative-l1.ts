/**
 * TeaCache's relative L1 computed here from two modulated inputs, as a test's independent check of
 * transformer_change's in-graph arithmetic (gpu-node/stages/teacache.ts).
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { roundTo, type ComputeDtype } from "../../gpu-node/stages/teacache.js";

/**
 * `((a - b).abs().mean() / b.abs().mean()).item()` in the modulated input's dtype: the difference,
 * each mean and the quotient rounded to it (torch accumulates the means in float32; here in
 * float64, then rounded). The difference is rounded as roundTo(dtype) rounds it (to float32, then
 * to the half type, as torch's half arithmetic does), but inline (roundedAbs): at the real width a
 * call compares ~60 M values, and a conversion through bit patterns per value took 2.8 s a call.
 */
export function relativeL1(current: F32, previous: F32, dtype: ComputeDtype = "fp32"): number {
  const round = roundTo(dtype);
  const diff = sumOfRoundedAbsDiff(current.data, previous.data, dtype);
  let norm = 0;
  const b = previous.data;
  for (let i = 0; i < b.length; i++) norm += Math.abs(b[i]!);
  const n = current.data.length;
  return round(round(diff / n) / round(norm / n));
}

/**
 * Adding then subtracting 1.5 * 2^52 * u rounds a smaller non-negative double to a multiple of u,
 * to nearest even (the addition's own rounding); u is the ulp of the half type in x's binade.
 * Indexed by x's float32 exponent field (0..255); the subnormal binades use the smallest normal's u.
 */
function magicTable(minExponent: number, mantissaBits: number): Float64Array {
  const t = new Float64Array(256);
  for (let field = 0; field < 256; field++)
    t[field] = 1.5 * 2 ** (52 + Math.max(field - 127, minExponent) - mantissaBits);
  return t;
}
const F16_MAGIC = magicTable(-14, 10);
const BF16_MAGIC = magicTable(-126, 7);

/** Values per pass: the differences are made in float32 here, then read back with their bits. */
const CHUNK = 1 << 16;
const chunkF = new Float32Array(CHUNK);
const chunkU = new Uint32Array(chunkF.buffer);

/** sum over i of |round(a[i] - b[i])|, round as roundTo(dtype). */
function sumOfRoundedAbsDiff(a: Float32Array, b: Float32Array, dtype: ComputeDtype): number {
  let sum = 0;
  if (dtype === "fp32") {
    const f = Math.fround;
    for (let i = 0; i < a.length; i++) sum += Math.abs(f(a[i]! - b[i]!));
    return sum;
  }
  const half = dtype === "fp16";
  const magic = half ? F16_MAGIC : BF16_MAGIC;
  // fp16: 65520 and above round to infinity; bf16: a float32 rounds to 2^128 only at its top.
  const overflow = half ? 65520 : 2 ** 128;
  for (let at = 0; at < a.length; at += CHUNK) {
    const n = Math.min(CHUNK, a.length - at);
    // float32 differences (the store rounds), sign bits cleared: |a - b| with its exponent field.
    for (let i = 0; i < n; i++) chunkF[i] = a[at + i]! - b[at + i]!;
    for (let i = 0; i < n; i++) {
      const u = chunkU[i]! & 0x7fffffff;
      const x = chunkF[i]! < 0 ? -chunkF[i]! : chunkF[i]!;
      const s = magic[u >>> 23]!;
      let r = x + s - s;
      if (!(r < overflow)) r = x === x ? Infinity : x; // past the largest half: infinity; NaN stays
      sum += r;
    }
  }
  return sum;
}
