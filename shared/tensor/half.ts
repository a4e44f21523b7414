/**
 * float32 <-> float16 / bfloat16 bit patterns, rounding to nearest even like torch's .to(). Half
 * tensors are stored as Uint16Array; these are the only conversions the farm needs (ONNX graphs
 * exported in fp16/bf16, decode outputs kept in fp16).
 */
const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** The IEEE binary32 bits of x (after rounding x to float32). */
export function bitsOf(x: number): number {
  scratchF[0] = x;
  return scratchU[0]!;
}

/** The float32 with these bits. */
export function fromBits(b: number): number {
  scratchU[0] = b >>> 0;
  return scratchF[0]!;
}

/** IEEE binary16 bits of x (x is first rounded to float32, as a Float32Array element would be). */
export function f32ToF16Bits(x: number): number {
  const b = bitsOf(x);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  // NaN becomes torch's canonical 0x7e00 (sign kept), as c10's fp16_ieee_from_fp32_value does.
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  // Unbiased exponent e: half normals cover e in [-14, 15], subnormals reach 2^-24.
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    const half = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    // Round to nearest even; a carry into the exponent (even to infinity) is the right result.
    const up = rest > 0x1000 || (rest === 0x1000 && (half & 1) === 1);
    return sign | (half + (up ? 1 : 0));
  }
  if (e < -25) return sign;
  // Subnormal: value = full * 2^(e-23) with the implicit bit; express it in units of 2^-24.
  const full = mant | 0x800000;
  const shift = -e - 1;
  const q = full >>> shift;
  const rem = full & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  const up = rem > halfway || (rem === halfway && (q & 1) === 1);
  return sign | (q + (up ? 1 : 0));
}

/** The float32 (exactly representable) value of binary16 bits h. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits of x: the upper half of the float32, rounded to nearest even; NaN is c10's 0x7fc0. */
export function f32ToBf16Bits(x: number): number {
  const b = bitsOf(x);
  if ((b & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  return fromBits((h & 0xffff) << 16);
}

export function toFloat16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = f32ToF16Bits(data[i]!);
  return out;
}

export function fromFloat16(data: Uint16Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = f16BitsToF32(data[i]!);
  return out;
}

export function toBFloat16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = f32ToBf16Bits(data[i]!);
  return out;
}

export function fromBFloat16(data: Uint16Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = bf16BitsToF32(data[i]!);
  return out;
}
