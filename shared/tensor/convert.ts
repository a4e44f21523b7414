/** Reads any tensor's values as float64, for comparisons and reports (not for hot paths). */
import { Tensor, type F32 } from "./tensor.js";
import { bf16BitsToF32, f16BitsToF32, fromBFloat16, fromFloat16 } from "./half.js";

export function toFloat64(t: Tensor): Float64Array {
  const out = new Float64Array(t.numel);
  if (t.is("float16")) {
    for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32(t.data[i]!);
  } else if (t.is("bfloat16")) {
    for (let i = 0; i < out.length; i++) out[i] = bf16BitsToF32(t.data[i]!);
  } else if (t.is("int64")) {
    for (let i = 0; i < out.length; i++) out[i] = Number(t.data[i]!);
  } else {
    const data = t.data as ArrayLike<number>;
    for (let i = 0; i < out.length; i++) out[i] = data[i]!;
  }
  return out;
}

/** Any floating tensor as float32 (half types widened exactly, float64 rounded); others rejected. */
export function toF32(t: Tensor): F32 {
  if (t.is("float32")) return t;
  if (t.is("float16")) return new Tensor("float32", t.shape, fromFloat16(t.data));
  if (t.is("bfloat16")) return new Tensor("float32", t.shape, fromBFloat16(t.data));
  if (t.is("float64")) return new Tensor("float32", t.shape, Float32Array.from(t.data));
  throw new RangeError(`cannot read a ${t.describe()} tensor as float32`);
}
