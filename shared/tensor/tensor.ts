/** Element types the farm stores and moves. Half types are kept as raw 16-bit patterns. */
export type DType = "float32" | "float64" | "float16" | "bfloat16" | "int64" | "int32" | "uint8" | "bool";

export interface DataOf {
  float32: Float32Array;
  float64: Float64Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`invalid dimension ${d} in shape [${shape.join(", ")}]`);
    n *= d;
  }
  return n;
}

/** A dense, row-major (C-contiguous) tensor. */
export class Tensor<D extends DType = DType> {
  readonly shape: readonly number[];
  constructor(
    readonly dtype: D,
    shape: readonly number[],
    readonly data: DataOf[D],
  ) {
    this.shape = Object.freeze([...shape]);
    const n = numelOf(shape);
    if (data.length !== n) {
      throw new RangeError(`${dtype} tensor of shape [${shape.join(", ")}] needs ${n} elements, got ${data.length}`);
    }
  }

  get numel(): number {
    return this.data.length;
  }

  static zeros(shape: readonly number[]): Tensor<"float32"> {
    return new Tensor("float32", shape, new Float32Array(numelOf(shape)));
  }

  static f32(shape: readonly number[], data: Float32Array | readonly number[]): Tensor<"float32"> {
    return new Tensor("float32", shape, data instanceof Float32Array ? data : Float32Array.from(data));
  }

  static i64(shape: readonly number[], data: BigInt64Array | readonly (number | bigint)[]): Tensor<"int64"> {
    return new Tensor(
      "int64",
      shape,
      data instanceof BigInt64Array ? data : BigInt64Array.from(data, (v) => BigInt(v)),
    );
  }

  /** Same data, new shape (no copy). */
  reshape(shape: readonly number[]): Tensor<D> {
    return new Tensor(this.dtype, shape, this.data);
  }

  is<E extends DType>(dtype: E): this is Tensor<E> {
    return (this.dtype as DType) === dtype;
  }

  describe(): string {
    return `${this.dtype}[${this.shape.join(", ")}]`;
  }
}

export type F32 = Tensor<"float32">;
export type I64 = Tensor<"int64">;
