/** The few float32 tensor operations the FramePack pipeline needs, on row-major data. */
import { Tensor, numelOf, type F32 } from "./tensor.js";
import { toFloat64 } from "./convert.js";

/** outer = product of dims before `dim`, inner = product of dims after it. */
function strides(shape: readonly number[], dim: number): { outer: number; size: number; inner: number } {
  if (dim < 0 || dim >= shape.length) throw new RangeError(`dim ${dim} out of range for rank ${shape.length}`);
  return { outer: numelOf(shape.slice(0, dim)), size: shape[dim]!, inner: numelOf(shape.slice(dim + 1)) };
}

/** t[..., start:start+length, ...] along dim (a copy). */
export function narrow(t: F32, dim: number, start: number, length: number): F32 {
  const { outer, size, inner } = strides(t.shape, dim);
  if (start < 0 || length < 0 || start + length > size)
    throw new RangeError(`narrow [${start}, ${start + length}) outside 0..${size} of dim ${dim}`);
  const out = new Float32Array(outer * length * inner);
  for (let o = 0; o < outer; o++) {
    const from = (o * size + start) * inner;
    out.set(t.data.subarray(from, from + length * inner), o * length * inner);
  }
  const shape = [...t.shape];
  shape[dim] = length;
  return new Tensor("float32", shape, out);
}

/** torch.cat along dim; every other dim must agree. */
export function cat(tensors: readonly F32[], dim: number): F32 {
  const first = tensors[0];
  if (first === undefined) throw new RangeError("cat of no tensors");
  const shape = [...first.shape];
  let total = 0;
  for (const t of tensors) {
    if (t.shape.length !== shape.length || t.shape.some((d, i) => i !== dim && d !== shape[i])) {
      throw new RangeError(`cat: shape [${t.shape.join(",")}] does not match [${shape.join(",")}] outside dim ${dim}`);
    }
    total += t.shape[dim]!;
  }
  shape[dim] = total;
  const { outer, inner } = strides(shape, dim);
  const out = new Float32Array(numelOf(shape));
  let at = 0;
  for (let o = 0; o < outer; o++) {
    for (const t of tensors) {
      const chunk = t.shape[dim]! * inner;
      out.set(t.data.subarray(o * chunk, (o + 1) * chunk), at);
      at += chunk;
    }
  }
  return new Tensor("float32", shape, out);
}

/** torch.split with explicit sizes along dim. */
export function split(t: F32, dim: number, sizes: readonly number[]): F32[] {
  const parts: F32[] = [];
  let start = 0;
  for (const s of sizes) {
    parts.push(narrow(t, dim, start, s));
    start += s;
  }
  if (start !== t.shape[dim]) throw new RangeError(`split sizes ${sizes.join("+")} != ${t.shape[dim]}`);
  return parts;
}

/** Elementwise map; each result is rounded to float32 on store. */
export function map(t: F32, fn: (x: number, i: number) => number): F32 {
  const out = new Float32Array(t.numel);
  for (let i = 0; i < out.length; i++) out[i] = fn(t.data[i]!, i);
  return new Tensor("float32", t.shape, out);
}

function sameShape(a: Tensor, b: Tensor, op: string): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new RangeError(`${op}: shapes [${a.shape.join(",")}] and [${b.shape.join(",")}] differ`);
  }
}

/** Elementwise a + b in float32 (same shape, no broadcasting). */
export function add(a: F32, b: F32): F32 {
  sameShape(a, b, "add");
  return map(a, (x, i) => x + b.data[i]!);
}

/** Elementwise a - b in float32. */
export function sub(a: F32, b: F32): F32 {
  sameShape(a, b, "sub");
  return map(a, (x, i) => x - b.data[i]!);
}

/** Elementwise a * b in float32. */
export function mul(a: F32, b: F32): F32 {
  sameShape(a, b, "mul");
  return map(a, (x, i) => x * b.data[i]!);
}

/** t * s, with s rounded to float32 first as torch does for a Python scalar. */
export function scale(t: F32, s: number): F32 {
  const sf = Math.fround(s);
  return map(t, (x) => x * sf);
}

/** t / s, with s rounded to float32 first (a true division, as torch does for float32). */
export function divScalar(t: F32, s: number): F32 {
  const sf = Math.fround(s);
  return map(t, (x) => x / sf);
}

/** Largest |a - b| over all elements, any dtype, compared in float64. */
export function maxAbsDiff(a: Tensor, b: Tensor): number {
  sameShape(a, b, "maxAbsDiff");
  const x = toFloat64(a);
  const y = toFloat64(b);
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}

/** ||a - b|| / ||b||, b being the reference; 0 when both are zero, Infinity when only b is. */
export function relL2(a: Tensor, b: Tensor): number {
  sameShape(a, b, "relL2");
  const x = toFloat64(a);
  const y = toFloat64(b);
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    const d = x[i]! - y[i]!;
    num += d * d;
    den += y[i]! * y[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}
