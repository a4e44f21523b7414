/**
 * diffusers' _soft_append: joins two decoded clips [1, 3, T, H, W] with a linear cross-fade over
 * `overlap` frames (history fades out, current fades in), in float32.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";

/** torch.linspace(1, 0, n, dtype=float32): torch fills the two halves from either end. */
export function fadeWeights(n: number): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = 1;
    return out;
  }
  const step = f(-1 / (n - 1));
  const half = Math.floor(n / 2);
  for (let i = 0; i < n; i++) out[i] = i < half ? f(1 + f(step * i)) : f(0 - f(step * (n - 1 - i)));
  return out;
}

export function softAppend(history: F32, current: F32, overlap: number): F32 {
  const [b, c, th, hh, ww] = history.shape as [number, number, number, number, number];
  const tc = current.shape[2]!;
  if (overlap <= 0) overlap = 0;
  if (th < overlap || tc < overlap) throw new RangeError(`soft append needs ${overlap} frames on both sides, got ${th} and ${tc}`);
  const frame = hh * ww;
  const t = th + tc - overlap;
  const out = new Float32Array(b * c * t * frame);
  const weights = fadeWeights(overlap);
  const f = Math.fround;
  for (let bc = 0; bc < b * c; bc++) {
    const hBase = bc * th * frame;
    const cBase = bc * tc * frame;
    const oBase = bc * t * frame;
    out.set(history.data.subarray(hBase, hBase + (th - overlap) * frame), oBase);
    for (let k = 0; k < overlap; k++) {
      const wgt = weights[k]!;
      const inv = f(1 - wgt);
      const hOff = hBase + (th - overlap + k) * frame;
      const cOff = cBase + k * frame;
      const oOff = oBase + (th - overlap + k) * frame;
      for (let p = 0; p < frame; p++) out[oOff + p] = f(f(wgt * history.data[hOff + p]!) + f(inv * current.data[cOff + p]!));
    }
    out.set(current.data.subarray(cBase + overlap * frame, cBase + tc * frame), oBase + th * frame);
  }
  return new Tensor("float32", [b, c, t, hh, ww], out);
}
