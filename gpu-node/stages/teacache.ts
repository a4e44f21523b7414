/**
 * TeaCache (--cache teacache) as lllyasviel's FramePack does it
 * (diffusers_helper/models/hunyuan_video_packed.py, initialize_teacache and forward): per
 * transformer call, the first block's modulated input (norm1 of the packed hidden states with
 * temb) is compared with the previous call's; the polynomial-rescaled relative L1 change is
 * accumulated, and while the sum stays under the threshold the blocks are skipped: the previous
 * computed call's residual (hidden after the last block minus hidden before the first) is added to
 * the hidden states and only norm_out and proj_out run. The first and last calls of a section
 * (cnt 0 and num_steps - 1) always compute. Like his, the state counts transformer calls, not
 * sampler steps: under true CFG the negative prompt's call advances it too.
 *
 * The change is measured by transformer_change (framefarm_export.step_cache_graphs), which recomputes
 * the previous call's modulated input from that call's inputs (a few MB) beside this call's and
 * gives only the two means, so no hidden-state-sized tensor leaves the device for the decision;
 * the call itself runs on step-cache-graphs.ts.
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { PREVIOUS_CALL_PREFIX } from "../../shared/bundle/manifest.js";
import type { Feed } from "../runtime/onnx-model.js";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../../shared/tensor/half.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { StepCache, StepCacheCall } from "./step-cache.js";
import { StepCacheGraphs } from "./step-cache-graphs.js";
import { STEADY_TRANSFORMER_FEEDS } from "./transformer-feeds.js";

/** np.poly1d's coefficients, highest power first (initialize_teacache's teacache_rescale_func). */
export const TEACACHE_COEFFICIENTS = [7.33226126e2, -4.01131952e2, 6.75869174e1, -3.149878, 9.61237896e-2] as const;
/** lllyasviel's default rel_l1_thresh ("0.1 for 1.6x speedup, 0.15 for 2.1x speedup"). */
export const DEFAULT_TEACACHE_THRESHOLD = 0.15;

export function teacacheRescale(x: number): number {
  let y = 0;
  for (const c of TEACACHE_COEFFICIENTS) y = y * x + c;
  return y;
}

export type ComputeDtype = "fp32" | "fp16" | "bf16";

/** Rounds a number to the transformer's compute dtype, as torch stores a result in it. */
export function roundTo(dtype: ComputeDtype): (x: number) => number {
  if (dtype === "bf16") return (x) => bf16BitsToF32(f32ToBf16Bits(Math.fround(x)));
  if (dtype === "fp16") return (x) => f16BitsToF32(f32ToF16Bits(Math.fround(x)));
  return Math.fround;
}

/**
 * `((a - b).abs().mean() / b.abs().mean()).item()` in the modulated input's dtype, from
 * transformer_change's [mean |a - b|, mean |b|] (modulated_l1): each mean and the quotient
 * rounded to it (the graph rounds each difference to it first, as torch does).
 */
export function relativeL1FromMeans(means: F32, dtype: ComputeDtype = "fp32"): number {
  if (means.numel !== 2) throw new RangeError(`modulated_l1 holds ${means.numel} values, not 2`);
  const round = roundTo(dtype);
  return round(round(means.data[0]!) / round(means.data[1]!));
}

/** The steady feeds of transformer_change: the transformer's, for this call and the previous one. */
const STEADY_CHANGE_FEEDS: ReadonlySet<string> = new Set(
  [...STEADY_TRANSFORMER_FEEDS].flatMap((n) => [n, PREVIOUS_CALL_PREFIX + n]),
);

/** transformer_change's feeds: this call's, and the previous call's under their prefixed names. */
export function changeFeeds(feeds: Record<string, Feed>, previous: Record<string, Feed>): Record<string, Feed> {
  const both: Record<string, Feed> = { ...feeds };
  for (const [name, t] of Object.entries(previous)) both[PREVIOUS_CALL_PREFIX + name] = t;
  return both;
}

export class TeaCache implements StepCache {
  private cnt = 0;
  private accumulated = 0;
  /** The previous call's feeds (never changed in place: the loops make new tensors each step). */
  private previousFeeds: Record<string, Feed> | undefined;
  private readonly graphs: StepCacheGraphs;

  constructor(
    private readonly runtime: Pick<ModelRuntime, "model">,
    readonly threshold: number,
    /** num_steps: the section's sampling steps. */
    readonly numSteps: number,
    /** The dtype the transformer computes the modulated input in (transformer_change's manifest entry). */
    readonly dtype: ComputeDtype = "fp32",
  ) {
    this.graphs = new StepCacheGraphs(runtime);
  }

  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  get computed(): number[] {
    return this.graphs.computed;
  }

  /** The relative L1 change of block 0's modulated input since the previous call. */
  private async change(feeds: Record<string, Feed>, previous: Record<string, Feed>): Promise<number> {
    const model = await this.runtime.model("transformer_change");
    const means = (await model.run(changeFeeds(feeds, previous), STEADY_CHANGE_FEEDS))["modulated_l1"]!;
    return relativeL1FromMeans(means, this.dtype);
  }

  /** A section's first and last calls (cnt 0 and num_steps - 1) always compute. */
  private alwaysComputes(cnt: number): boolean {
    return cnt === 0 || cnt === this.numSteps - 1;
  }

  /** One transformer call with the transformer's feeds. */
  async run(feeds: Record<string, Feed>): Promise<StepCacheCall> {
    let shouldCalc: boolean;
    if (this.alwaysComputes(this.cnt) || this.previousFeeds === undefined) {
      shouldCalc = true;
      this.accumulated = 0;
    } else {
      this.accumulated += teacacheRescale(await this.change(feeds, this.previousFeeds));
      shouldCalc = this.accumulated >= this.threshold;
      if (shouldCalc) this.accumulated = 0;
    }
    this.previousFeeds = feeds;
    this.cnt += 1;
    if (this.cnt === this.numSteps) this.cnt = 0;
    // The next call may reuse this call's residual unless it always computes.
    return this.graphs.call(feeds, !shouldCalc, !this.alwaysComputes(this.cnt));
  }

  release(): void {
    this.graphs.release();
    this.previousFeeds = undefined;
  }
}
