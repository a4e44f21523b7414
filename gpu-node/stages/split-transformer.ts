/**
 * The split transformer (transformer_head / transformer_body / transformer_tail,
 * framefarm_export.teacache_split) as both step caches run it once they have decided a call:
 * computed, the body runs the blocks and its residual is kept; skipped, the kept residual is added
 * to the head's hidden states and only the tail (norm_out, proj_out) runs.
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { Feed } from "../runtime/onnx-model.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { StepCacheCall } from "./step-cache.js";
import { STEADY_TRANSFORMER_FEEDS } from "./transformer-feeds.js";

/** hidden + residual, each sum rounded to float32 as torch adds (TeaCache's and MagCache's skipped call). */
export function addF32(a: F32, b: F32): F32 {
  if (a.numel !== b.numel)
    throw new Error(`step cache: hidden states of ${a.numel} values, cached residual of ${b.numel}`);
  const out = new Float32Array(a.numel);
  for (let i = 0; i < out.length; i++) out[i] = a.data[i]! + b.data[i]!;
  return new Tensor("float32", a.shape, out);
}

/** The head's input for the previous call's modulated input, when it measures the L1 itself. */
export const PREVIOUS_MODULATED = "previous_modulated_input";
/** What such a head takes with no previous call (broadcast over the modulated input; unused). */
const NO_PREVIOUS = new Tensor("float32", [1, 1, 1], new Float32Array(1));

export class SplitTransformer {
  private previousResidual: F32 | undefined;
  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  readonly computed: number[] = [];

  constructor(private readonly runtime: Pick<ModelRuntime, "model">) {}

  /**
   * The head: hidden_in, encoder_in and what a cache measures (modulated_input). A head that
   * measures TeaCache's relative L1 itself (modulated_l1) takes the previous call's modulated
   * input; without one (a section's first call, MagCache) it gets a broadcast zero.
   */
  async head(feeds: Record<string, Feed>, previousModulated?: F32): Promise<Record<string, F32>> {
    const model = await this.runtime.model("transformer_head");
    const withPrevious = model.inputNames.includes(PREVIOUS_MODULATED)
      ? { ...feeds, [PREVIOUS_MODULATED]: previousModulated ?? NO_PREVIOUS }
      : feeds;
    return model.run(withPrevious, STEADY_TRANSFORMER_FEEDS);
  }

  /** The rest of the call after the head: the blocks, or (skip) the kept residual and the tail. */
  async finish(feeds: Record<string, Feed>, headOut: Record<string, F32>, skip: boolean): Promise<StepCacheCall> {
    const hiddenIn = headOut["hidden_in"]!;
    // Never reached without a residual: call 0 always computes.
    if (skip && this.previousResidual !== undefined) {
      const tail = await this.runtime.model("transformer_tail");
      const out = await tail.run(
        { ...feeds, hidden_out: addF32(hiddenIn, this.previousResidual) },
        STEADY_TRANSFORMER_FEEDS,
      );
      this.computed.push(0);
      return { noisePred: out["noise_pred"]!, computed: false };
    }
    const body = await this.runtime.model("transformer_body");
    const out = await body.run(
      { ...feeds, hidden_in: hiddenIn, encoder_in: headOut["encoder_in"]! },
      STEADY_TRANSFORMER_FEEDS,
    );
    this.previousResidual = out["residual"]!;
    this.computed.push(1);
    return { noisePred: out["noise_pred"]!, computed: true };
  }
}
