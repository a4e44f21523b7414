/** The few float32 tensor operations the FramePack pipeline needs, on row-major data. */
import { Tensor, numelOf, type F32 } from "./tensor.js";

/** outer = product of dims before `dim`, inner = product of dims after it. */
function strides(shape: readonly number[], dim: number): { outer: number; size: number; inner: number } {
  if (dim < 0 || dim >= shape.length) throw new RangeError(`dim ${dim} out of range for rank ${shape.length}`);
  return { outer: numelOf(shape.slice(0, dim)), size: shape[dim]!, inner: numelOf(shape.slice(dim + 1)) };
}

/** t[..., start:start+length, ...] along dim (a copy). */
export function narrow(t: F32, dim: number, start: number, length: number): F32 {
  const { outer, size, inner } = strides(t.shape, dim);
  if (start < 0 || length < 0 || start + length > size) throw new RangeError(`narrow [${start}, ${start + length}) outside 0..${size} of dim ${dim}`);
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

/** Elementwise map in float32. */
export function map(t: F32, fn: (x: number, i: number) => number): F32 {
  const out = new Float32Array(t.numel);
  for (let i = 0; i < out.length; i++) out[i] = fn(t.data[i]!, i);
  return new Tensor("float32", t.shape, out);
}
