/**
 * An output a session left where it ran (OnnxModel.runTimed's `keep`), to be fed to a session that
 * runs there: a step cache's residual (90-240 MB of float16) goes from one transformer graph to the
 * other without being converted, copied or posted to the node's thread.
 */

/** Where kept tensors live: this thread, or one SessionHost's worker. A tensor is fed only there. */
export interface KeptPlace {
  /** For errors: "this thread", "session host 2's worker". */
  readonly name: string;
  /** Whether `kept` is held here still: not released, and this place not ended. */
  has(kept: KeptTensor): boolean;
  /** Lets `kept` go; runs asked for before still get it. */
  free(kept: KeptTensor): void;
}

export class KeptTensor {
  constructor(
    /** onnxruntime's type ("float16", ...). */
    readonly type: string,
    readonly dims: readonly number[],
    readonly place: KeptPlace,
  ) {}

  /** Frees the tensor where it lives; feeding it after this throws. */
  release(): void {
    this.place.free(this);
  }

  describe(): string {
    return `kept ${this.type}[${this.dims.join(", ")}]`;
  }
}
