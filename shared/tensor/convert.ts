/** Reads any tensor's values as float64, for comparisons and reports (not for hot paths). */
import { Float16Array } from "@petamoriken/float16";
import type { Tensor } from "./tensor.js";

export function toFloat64(t: Tensor): Float64Array {
  const out = new Float64Array(t.numel);
  if (t.is("float16")) {
    const halves = new Float16Array(t.data.buffer, t.data.byteOffset, t.data.length);
    for (let i = 0; i < out.length; i++) out[i] = halves[i]!;
  } else if (t.is("bfloat16")) {
    const f = new Float32Array(1);
    const bits = new Uint32Array(f.buffer);
    for (let i = 0; i < out.length; i++) {
      bits[0] = t.data[i]! << 16;
      out[i] = f[0]!;
    }
  } else if (t.is("int64")) {
    for (let i = 0; i < out.length; i++) out[i] = Number(t.data[i]!);
  } else {
    const data = t.data as ArrayLike<number>;
    for (let i = 0; i < out.length; i++) out[i] = data[i]!;
  }
  return out;
}
