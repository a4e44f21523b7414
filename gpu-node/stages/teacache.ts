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
 * The single transformer graph cannot stop half-way, so the bundle carries it cut in three
 * (framefarm_export.teacache_split): transformer_head (embeddings -> hidden_in, encoder_in,
 * modulated_input), transformer_body (the blocks, norm_out, proj_out -> noise_pred, residual) and
 * transformer_tail (norm_out, proj_out of hidden_out -> noise_pred).
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { Feed } from "../runtime/onnx-model.js";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../../shared/tensor/half.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { StepCache, StepCacheCall } from "./step-cache.js";
import { SplitTransformer } from "./split-transformer.js";

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
 * `((a - b).abs().mean() / b.abs().mean()).item()` in the modulated input's dtype: the difference,
 * each mean and the quotient rounded to it (torch accumulates the means in float32; here in
 * float64, then rounded). The difference is rounded as roundTo(dtype) rounds it (to float32, then
 * to the half type, as torch's half arithmetic does), but inline (roundedAbs): at the real width a
 * call compares ~60 M values, and a conversion through bit patterns per value took 2.8 s a call.
 */
export function relativeL1(current: F32, previous: F32, dtype: ComputeDtype = "fp32"): number {
  const round = roundTo(dtype);
  const diff = sumOfRoundedAbsDiff(current.data, previous.data, dtype);
  let norm = 0;
  const b = previous.data;
  for (let i = 0; i < b.length; i++) norm += Math.abs(b[i]!);
  const n = current.data.length;
  return round(round(diff / n) / round(norm / n));
}

/**
 * Adding then subtracting 1.5 * 2^52 * u rounds a smaller non-negative double to a multiple of u,
 * to nearest even (the addition's own rounding); u is the ulp of the half type in x's binade.
 * Indexed by x's float32 exponent field (0..255); the subnormal binades use the smallest normal's u.
 */
function magicTable(minExponent: number, mantissaBits: number): Float64Array {
  const t = new Float64Array(256);
  for (let field = 0; field < 256; field++)
    t[field] = 1.5 * 2 ** (52 + Math.max(field - 127, minExponent) - mantissaBits);
  return t;
}
const F16_MAGIC = magicTable(-14, 10);
const BF16_MAGIC = magicTable(-126, 7);

/** Values per pass: the differences are made in float32 here, then read back with their bits. */
const CHUNK = 1 << 16;
const chunkF = new Float32Array(CHUNK);
const chunkU = new Uint32Array(chunkF.buffer);

/** sum over i of |round(a[i] - b[i])|, round as roundTo(dtype). */
function sumOfRoundedAbsDiff(a: Float32Array, b: Float32Array, dtype: ComputeDtype): number {
  let sum = 0;
  if (dtype === "fp32") {
    const f = Math.fround;
    for (let i = 0; i < a.length; i++) sum += Math.abs(f(a[i]! - b[i]!));
    return sum;
  }
  const half = dtype === "fp16";
  const magic = half ? F16_MAGIC : BF16_MAGIC;
  // fp16: 65520 and above round to infinity; bf16: a float32 rounds to 2^128 only at its top.
  const overflow = half ? 65520 : 2 ** 128;
  for (let at = 0; at < a.length; at += CHUNK) {
    const n = Math.min(CHUNK, a.length - at);
    // float32 differences (the store rounds), sign bits cleared: |a - b| with its exponent field.
    for (let i = 0; i < n; i++) chunkF[i] = a[at + i]! - b[at + i]!;
    for (let i = 0; i < n; i++) {
      const u = chunkU[i]! & 0x7fffffff;
      const x = chunkF[i]! < 0 ? -chunkF[i]! : chunkF[i]!;
      const s = magic[u >>> 23]!;
      let r = x + s - s;
      if (!(r < overflow)) r = x === x ? Infinity : x; // past the largest half: infinity; NaN stays
      sum += r;
    }
  }
  return sum;
}

/** relativeL1's result from the head's [mean |a - b|, mean |b|] (modulated_l1). */
export function relativeL1FromMeans(means: F32, dtype: ComputeDtype = "fp32"): number {
  if (means.numel !== 2) throw new RangeError(`modulated_l1 holds ${means.numel} values, not 2`);
  const round = roundTo(dtype);
  return round(round(means.data[0]!) / round(means.data[1]!));
}

export class TeaCache implements StepCache {
  private cnt = 0;
  private accumulated = 0;
  private previousModulated: F32 | undefined;
  private readonly split: SplitTransformer;

  constructor(
    runtime: Pick<ModelRuntime, "model">,
    readonly threshold: number,
    /** num_steps: the section's sampling steps. */
    readonly numSteps: number,
    /** The dtype the transformer computes the modulated input in (the head's manifest entry). */
    readonly dtype: ComputeDtype = "fp32",
  ) {
    this.split = new SplitTransformer(runtime);
  }

  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  get computed(): number[] {
    return this.split.computed;
  }

  /** One transformer call with the transformer's feeds. */
  async run(feeds: Record<string, Feed>): Promise<StepCacheCall> {
    // A head that measures the relative L1 itself (teacache_split.py: modulated_l1) takes the
    // previous call's modulated input; older bundles' heads leave it to relativeL1 here.
    const headOut = await this.split.head(feeds, this.previousModulated);
    const inGraph = headOut["modulated_l1"] !== undefined;
    const modulated = headOut["modulated_input"]!;
    let shouldCalc: boolean;
    if (this.cnt === 0 || this.cnt === this.numSteps - 1 || this.previousModulated === undefined) {
      shouldCalc = true;
      this.accumulated = 0;
    } else {
      const relative = inGraph
        ? relativeL1FromMeans(headOut["modulated_l1"]!, this.dtype)
        : relativeL1(modulated, this.previousModulated, this.dtype);
      this.accumulated += teacacheRescale(relative);
      shouldCalc = this.accumulated >= this.threshold;
      if (shouldCalc) this.accumulated = 0;
    }
    this.previousModulated = modulated;
    this.cnt += 1;
    if (this.cnt === this.numSteps) this.cnt = 0;
    return this.split.finish(feeds, headOut, !shouldCalc);
  }
}
