/**
 * The float32 log and sin/cos that torch's AVX2 randn kernel uses (ATen's avx_mathfun.h, Cephes
 * polynomials), evaluated lane by lane with every operation rounded to float32. GCC builds that
 * header with FMA contraction on (-ffp-contract=fast), so a multiply whose only use is an add is
 * fused into it; fma32 reproduces exactly those fusions. With both, torch.randn is matched bit for
 * bit; libm's logf/cosf or unfused arithmetic differ in the last bit of about 1% of samples.
 */
import { bitsOf, fromBits } from "../tensor/half.js";

const f = Math.fround;

/** The neighbouring float32 of a (non-NaN, finite) float32 x in the direction of `toward`. */
function nextAfter32(x: number, toward: number): number {
  if (x === toward) return x;
  if (x === 0) return toward > 0 ? fromBits(1) : fromBits(0x80000001);
  const b = bitsOf(x);
  return fromBits(x < toward === x > 0 ? b + 1 : b - 1);
}

/**
 * Fused multiply-add of float32 values with a single float32 rounding. a*b is exact in double
 * (24 + 24 bits); the sum is exact as s + err (two-sum), and only a float32 tie point s needs err
 * to pick the side, since |err| is far below half a float32 ulp.
 */
export function fma32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bv = s - p;
  const err = p - (s - bv) + (c - bv);
  const r = f(s);
  if (err === 0 || r === s || !Number.isFinite(s)) return r;
  const other = nextAfter32(r, s > r ? Infinity : -Infinity);
  if (Math.abs(s - r) !== Math.abs(other - s)) return r;
  // s sits exactly between r and other: the true value is on the side err points to.
  return err > 0 === other > r ? other : r;
}

const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f);
const LOG_Q1 = f(-2.1219444e-4);
const LOG_Q2 = f(0.693359375);
const SQRTHF = f(0.707106781186547524);
const MIN_NORM_POS = fromBits(0x00800000);

/** log256_ps for one lane: NaN for x <= 0 (the kernel only sees x in (0, 1]). */
export function logf32(x: number): number {
  if (!(x > 0)) return NaN;
  const xb = bitsOf(Math.max(x, MIN_NORM_POS));
  let e = f((xb >>> 23) - 0x7f + 1);
  // Mantissa in [0.5, 1).
  let m = fromBits((xb & ~0x7f800000) | 0x3f000000);
  if (m < SQRTHF) {
    e = f(e - 1);
    m = f(f(m - 1) + m);
  } else {
    m = f(m - 1);
  }
  const z = f(m * m);
  let y = fma32(LOG_P[0]!, m, LOG_P[1]!);
  for (let k = 2; k < LOG_P.length; k++) y = fma32(y, m, LOG_P[k]!);
  y = f(y * m);
  // y*z + e*q1: GCC fuses the first-written product (y*z) and rounds e*q1 on its own.
  y = fma32(y, z, f(e * LOG_Q1));
  y = fma32(z, -0.5, y);
  return fma32(e, LOG_Q2, f(m + y));
}

const DP1 = f(-0.78515625);
const DP2 = f(-2.4187564849853515625e-4);
const DP3 = f(-3.77489497744594108e-8);
const SIN_P = [f(-1.9515295891e-4), f(8.3321608736e-3), f(-1.6666654611e-1)] as const;
const COS_P = [f(2.443315711809948e-5), f(-1.388731625493765e-3), f(4.166664568298827e-2)] as const;
const FOPI = f(1.27323954473516);

/** sincos256_ps for one lane: [sin x, cos x] with Cephes' octant reduction (|x| well below 8192). */
export function sincosf32(x: number): [number, number] {
  const negative = x < 0;
  let ax = Math.abs(x);
  let j = Math.trunc(f(ax * FOPI));
  j = (j + 1) & ~1;
  const y = f(j);
  const sinFlip = (j & 4) !== 0;
  const sinPoly = (j & 2) === 0;
  const cosFlip = (~(j - 2) & 4) !== 0;
  ax = fma32(y, DP1, ax);
  ax = fma32(y, DP2, ax);
  ax = fma32(y, DP3, ax);
  const z = f(ax * ax);
  let yc = fma32(COS_P[0], z, COS_P[1]);
  yc = fma32(yc, z, COS_P[2]);
  yc = f(yc * z);
  yc = fma32(yc, z, -f(z * 0.5));
  yc = f(yc + 1);
  let ys = fma32(SIN_P[0], z, SIN_P[1]);
  ys = fma32(ys, z, SIN_P[2]);
  ys = f(ys * z);
  ys = fma32(ys, ax, ax);
  const s = sinPoly ? ys : yc;
  const c = sinPoly ? yc : ys;
  // Sign flips are bit operations in the kernel: exact negations here.
  return [negative !== sinFlip ? -s : s, cosFlip ? -c : c];
}
