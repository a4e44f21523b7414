/**
 * diffusers' _soft_append: joins two decoded clips [1, 3, T, H, W] with a linear cross-fade over
 * `overlap` frames (history fades out, current fades in), in float32.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";

/** Floats per AVX2 vector: torch's CPU kernels for x86-64 run the AVX2 build. */
const VEC = 8;

/**
 * torch.linspace(start, end, n, dtype=float32) on CPU, value for value. The kernel computes
 * step = (end - start) / (n - 1) in float32 and fills the first half as start + step * i and the
 * second half as end - step * (n - 1 - i); its vectorised loop handles 16 elements at a time as two
 * vectors, each computed as base + k * step from the vector's first value, and the scalar formula
 * covers the remainder. The rounding of these two forms differs when step is not exact.
 */
export function linspaceF32(start: number, end: number, n: number): Float32Array {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`linspace needs a non-negative integer count, got ${n}`);
  const f = Math.fround;
  const out = new Float32Array(n);
  if (n === 0) return out;
  const s = f(start);
  const e = f(end);
  if (n === 1) {
    out[0] = s;
    return out;
  }
  const step = f(f(e - s) / f(n - 1));
  const halfway = Math.floor(n / 2);
  const scalarAt = (idx: number): number => (idx < halfway ? f(s + f(step * idx)) : f(e - f(step * (n - idx - 1))));
  let i = 0;
  for (; i + 2 * VEC <= n; i += 2 * VEC) {
    for (const at of [i, i + VEC]) {
      const base = scalarAt(at);
      for (let k = 0; k < VEC; k++) out[at + k] = k === 0 ? base : f(base + f(k * step));
    }
  }
  for (; i < n; i++) out[i] = scalarAt(i);
  return out;
}

/** The soft-append weights: torch.linspace(1, 0, n) in float32. */
export function fadeWeights(n: number): Float32Array {
  return linspaceF32(1, 0, n);
}

/** One blended plane of the overlap: out = weight * history + (1 - weight) * current, in float32. */
export function blendPlane(out: Float32Array, history: Float32Array, current: Float32Array, weight: number): void {
  const f = Math.fround;
  const inv = f(1 - weight);
  for (let p = 0; p < out.length; p++) out[p] = f(f(weight * history[p]!) + f(inv * current[p]!));
}

export function softAppend(history: F32, current: F32, overlap: number): F32 {
  const [b, c, th, hh, ww] = history.shape as [number, number, number, number, number];
  const tc = current.shape[2]!;
  if (history.shape.length !== 5 || current.shape.length !== 5)
    throw new RangeError("soft append joins [B, C, T, H, W] videos");
  if (current.shape[0] !== b || current.shape[1] !== c || current.shape[3] !== hh || current.shape[4] !== ww) {
    throw new RangeError(`soft append: ${history.describe()} and ${current.describe()} differ outside the time axis`);
  }
  // diffusers: overlap <= 0 is a plain concatenation.
  if (overlap <= 0) overlap = 0;
  if (th < overlap || tc < overlap)
    throw new RangeError(`soft append needs ${overlap} frames on both sides, got ${th} and ${tc}`);
  const frame = hh * ww;
  const t = th + tc - overlap;
  const out = new Float32Array(b * c * t * frame);
  const weights = fadeWeights(overlap);
  for (let bc = 0; bc < b * c; bc++) {
    const hBase = bc * th * frame;
    const cBase = bc * tc * frame;
    const oBase = bc * t * frame;
    out.set(history.data.subarray(hBase, hBase + (th - overlap) * frame), oBase);
    for (let k = 0; k < overlap; k++) {
      const hOff = hBase + (th - overlap + k) * frame;
      const cOff = cBase + k * frame;
      const oOff = oBase + (th - overlap + k) * frame;
      blendPlane(
        out.subarray(oOff, oOff + frame),
        history.data.subarray(hOff, hOff + frame),
        current.data.subarray(cOff, cOff + frame),
        weights[k]!,
      );
    }
    out.set(current.data.subarray(cBase + overlap * frame, cBase + tc * frame), oBase + th * frame);
  }
  return new Tensor("float32", [b, c, t, hh, ww], out);
}
