/**
 * MagCache (--cache magcache), FramePack-Studio's default step cache: Zehong Ma et al.'s
 * MagCache4FramePack (MagCache: Fast Video Generation with Magnitude-Aware Cache,
 * arXiv:2506.09045; its magcache_demo_gradio.py initialize_magcache and
 * magcache_framepack_forward), with the parameters as Studio exposes them (threshold, max
 * consecutive skips K, retention ratio; Studio's defaults 0.1, 2, 0.25).
 *
 * Per transformer call, at counter cnt: the first int(retention x num_steps) calls (and call 0)
 * always compute. After that the calibrated magnitude ratio of the residual at cnt (how much the
 * blocks' residual grew since the previous step, `mag_ratios`) is multiplied into an accumulated
 * ratio, |1 - accumulated ratio| is added to an accumulated error, and the call is skipped while
 * the error is at most the threshold, at most K calls in a row were skipped and the ratio at cnt
 * is within 0.06 of 1; otherwise the call computes and the accumulators restart. A skipped call
 * adds the last computed call's residual to the hidden states and runs only norm_out and
 * proj_out, over the same graphs as TeaCache (step-cache-graphs.ts). As in the reference, the
 * counter counts transformer calls, not sampler steps (under true CFG the negative prompt's call
 * advances it too) and wraps at num_steps; the state starts afresh each section.
 *
 * The decisions depend only on the ratios and the parameters, never on the tensors.
 */
import type { Feed } from "../runtime/onnx-model.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import { StepCacheGraphs } from "./step-cache-graphs.js";
import type { StepCache, StepCacheCall } from "./step-cache.js";

/**
 * initialize_magcache's mag_ratios for FramePack, calibrated at 25 steps: the mean ratio of the
 * residual's per-token norm to the previous step's (1.0 for step 0).
 */
export const MAGCACHE_RATIOS_25: readonly number[] = [
  1.0, 1.26562, 1.23438, 1.03125, 1.02344, 1.03906, 1.01562, 1.03906, 1.05469, 1.02344, 1.03906, 0.99609, 1.03125,
  1.02344, 1.01562, 1.02344, 1.00781, 1.04688, 0.98828, 1.0, 1.00781, 0.98828, 0.94141, 0.94141, 0.78906,
];
/** The largest |1 - ratio| of a step that may be skipped (a constant in the reference). */
export const MAGCACHE_MAX_STEP_DEVIATION = 0.06;

/** np.round: halves to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The reference's nearest_interp: the ratios for another step count, each step taking the
 * calibrated step at np.round(i * (src - 1) / (target - 1)); one step takes the last ratio.
 */
export function nearestInterp(src: readonly number[], target: number): number[] {
  if (target === 1) return [src[src.length - 1]!];
  const scale = (src.length - 1) / (target - 1);
  return Array.from({ length: target }, (_, i) => src[roundHalfEven(i * scale)]!);
}

/** The ratios for num_steps: the calibrated ones at 25 steps, else interpolated as initialize_magcache does. */
export function magRatios(numSteps: number): number[] {
  return numSteps === MAGCACHE_RATIOS_25.length ? [...MAGCACHE_RATIOS_25] : nearestInterp(MAGCACHE_RATIOS_25, numSteps);
}

export interface MagCacheOptions {
  /** num_steps: the section's sampling steps. */
  numSteps: number;
  /** magcache_thresh: the largest accumulated error of a skipped call. */
  threshold: number;
  /** K: the most calls skipped in a row. */
  k: number;
  /** retention_ratio: the first int(retention x num_steps) calls always compute. */
  retention: number;
}

/**
 * The skipping decisions alone, per transformer call (magcache_framepack_forward's bookkeeping).
 * The state restarts whenever the counter comes back to 0, so the decisions repeat every
 * num_steps calls: they are worked out once, and the next call's is known ahead (skipsNext).
 */
export class MagCacheSchedule {
  private cnt = 0;
  readonly ratios: readonly number[];
  /** Per counter value: whether that call skips. */
  private readonly skips: readonly boolean[];

  constructor(readonly options: MagCacheOptions) {
    this.ratios = magRatios(options.numSteps);
    const { threshold, k, numSteps, retention } = options;
    // Python's int() of the float product: truncation.
    const retained = Math.trunc(retention * numSteps);
    let accumulatedRatio = 1;
    let accumulatedSteps = 0;
    let accumulatedErr = 0;
    const skips: boolean[] = [];
    for (let cnt = 0; cnt < numSteps; cnt++) {
      let skip = false;
      if (cnt >= retained && cnt >= 1) {
        const ratio = this.ratios[cnt]!;
        accumulatedRatio *= ratio;
        accumulatedErr += Math.abs(1 - accumulatedRatio);
        accumulatedSteps += 1;
        if (accumulatedErr <= threshold && accumulatedSteps <= k && Math.abs(1 - ratio) <= MAGCACHE_MAX_STEP_DEVIATION)
          skip = true;
        else {
          accumulatedRatio = 1;
          accumulatedSteps = 0;
          accumulatedErr = 0;
        }
      }
      skips.push(skip);
    }
    this.skips = skips;
  }

  /** Whether the next call skips its blocks; advances the counter. */
  next(): boolean {
    const skip = this.skips[this.cnt]!;
    this.cnt = (this.cnt + 1) % this.options.numSteps;
    return skip;
  }

  /** Whether the call after the one next() last answered for skips (the counter stays). */
  skipsNext(): boolean {
    return this.skips[this.cnt]!;
  }
}

/** One section's MagCache over the step-cache graphs. */
export class MagCache implements StepCache {
  private readonly schedule: MagCacheSchedule;
  private readonly graphs: StepCacheGraphs;

  constructor(runtime: Pick<ModelRuntime, "model">, options: MagCacheOptions) {
    this.schedule = new MagCacheSchedule(options);
    this.graphs = new StepCacheGraphs(runtime);
  }

  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  get computed(): number[] {
    return this.graphs.computed;
  }

  /** One transformer call with the transformer's feeds. */
  async run(feeds: Record<string, Feed>): Promise<StepCacheCall> {
    const skip = this.schedule.next();
    // A computed call followed by another computed one leaves its residual on the device.
    return this.graphs.call(feeds, skip, this.schedule.skipsNext());
  }

  release(): void {
    this.graphs.release();
  }
}
