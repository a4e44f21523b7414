/**
 * torch.Generator("cpu").manual_seed(seed) followed by torch.randn(..., dtype=float32), draw for
 * draw. Float tensors of 16 or more elements follow ATen's normal_fill: every element gets a
 * 24-bit uniform, then blocks of 16 are turned into normals by Box-Muller (first 8 as u1, last 8 as
 * u2), and when the size is not a multiple of 16 the last 16 elements are drawn and transformed
 * again. Smaller tensors use the double-precision normal_distribution with its cached second value.
 * The Box-Muller block is torch's AVX2 kernel (the one x86-64 builds run), bit for bit.
 */
import { MT19937 } from "./mt19937.js";
import { logf32, sincosf32 } from "./cephes-f32.js";
import { FarmError } from "../errors.js";
import { Tensor, numelOf, type F32 } from "../tensor/tensor.js";

const TWO_POW_24 = 2 ** -24;
const TWO_POW_53 = 2 ** -53;
const TWO_PI = 2 * Math.PI;

/** How many 32-bit draws torch.randn of this many float32 elements consumes (numel >= 16). */
export function drawsForRandn(numel: number): number {
  if (numel < 16) throw new RangeError("draw counting is defined for tensors of 16 or more elements");
  return numel + (numel % 16 === 0 ? 0 : 16);
}

export class TorchGenerator {
  private readonly engine: MT19937;
  private cachedNormal: number | null = null;
  private consumed = 0;

  /** The seed as torch stores it: unsigned 64-bit (negative seeds wrap, as manual_seed does). */
  readonly seed: bigint;

  constructor(seed: bigint | number) {
    this.seed = normalizeSeed(seed);
    this.engine = new MT19937(this.seed);
  }

  /** 32-bit draws consumed so far: a position that the plan can record and skip() can restore. */
  get position(): number {
    return this.consumed;
  }

  skip(draws: number): void {
    this.engine.skip(draws);
    this.consumed += draws;
  }

  private nextUint32(): number {
    this.consumed++;
    return this.engine.nextUint32();
  }

  /** uniform_real_distribution<float>(0, 1): 24 random bits. */
  private uniformFloat(): number {
    return (this.nextUint32() & 0xffffff) * TWO_POW_24;
  }

  /** uniform_real_distribution<double>(0, 1): 53 bits of random64 (first draw is the high word). */
  private uniformDouble(): number {
    const hi = this.nextUint32();
    const lo = this.nextUint32();
    // (hi << 32 | lo) & (2^53 - 1) == (hi & 0x1fffff) * 2^32 + lo, exactly representable.
    return ((hi & 0x1fffff) * 4294967296 + lo) * TWO_POW_53;
  }

  private normalDouble(): number {
    if (this.cachedNormal !== null) {
      const v = this.cachedNormal;
      this.cachedNormal = null;
      return v;
    }
    const u1 = this.uniformDouble();
    const u2 = this.uniformDouble();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = TWO_PI * u1;
    this.cachedNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  randn(shape: readonly number[]): F32 {
    const n = numelOf(shape);
    const data = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) data[i] = this.normalDouble();
      return new Tensor("float32", shape, data);
    }
    for (let i = 0; i < n; i++) data[i] = this.uniformFloat();
    for (let i = 0; i + 16 <= n; i += 16) boxMuller16(data, i);
    if (n % 16 !== 0) {
      const start = n - 16;
      for (let i = 0; i < 16; i++) data[start + i] = this.uniformFloat();
      boxMuller16(data, start);
    }
    return new Tensor("float32", shape, data);
  }
}

/**
 * torch.Generator.manual_seed accepts any integer in [-2^63, 2^64): it reads it as uint64 and
 * reinterprets a negative int64 as its two's complement.
 */
export function normalizeSeed(seed: bigint | number): bigint {
  if (typeof seed === "number" && !Number.isSafeInteger(seed)) {
    throw new FarmError("INVALID_ARGUMENT", `seed must be an integer, got ${seed}`);
  }
  const s = BigInt(seed);
  if (s < -(1n << 63n) || s >= 1n << 64n) {
    throw new FarmError("INVALID_ARGUMENT", `seed ${s} is outside torch's range [-2^63, 2^64)`);
  }
  return s < 0n ? s + (1n << 64n) : s;
}

const TWO_PI_F32 = Math.fround(TWO_PI);

/**
 * normal_fill_16_AVX2 (mean 0, std 1): float32 throughout, theta = float(2*pi) * u2 rounded to
 * float32 (the scalar kernel would compute it in double), Cephes log/sincos. The final
 * fmadd(n, std, mean) is exact for std 1 and mean 0.
 */
function boxMuller16(data: Float32Array, at: number): void {
  const f = Math.fround;
  for (let j = 0; j < 8; j++) {
    const u1 = f(1 - data[at + j]!);
    const u2 = data[at + j + 8]!;
    const radius = f(Math.sqrt(f(-2 * logf32(u1))));
    const [sin, cos] = sincosf32(f(TWO_PI_F32 * u2));
    data[at + j] = f(radius * cos);
    data[at + j + 8] = f(radius * sin);
  }
}
