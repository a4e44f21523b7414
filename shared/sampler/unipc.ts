/**
 * lllyasviel's flow-matching UniPC (FramePack, diffusers_helper/k_diffusion/uni_pc_fm.py,
 * "Better Flow Matching UniPC"), variants bh1 and bh2, and the model wrapper around it
 * (diffusers_helper/k_diffusion/wrapper.py fm_wrapper: velocity to denoised x0, true CFG, CFG
 * rescale). The sampler works on denoised predictions; N steps are N model evaluations (the last
 * at the smallest non-zero sigma), and the result is the last denoised prediction, not x.
 *
 * Precision follows the source: every tensor operation is float32 and rounded after each
 * operation (Math.fround). The few places where torch calls BLAS/LAPACK (tensordot over 2-3
 * history terms, linalg.solve of a 2x2 or 3x3 system) are computed here as reference LAPACK
 * does (partial pivoting, reciprocal scaling) with float32 rounding; an optimized BLAS may fuse
 * those multiply-adds, which moves a result by about one float32 ulp.
 */
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";

export type UniPCVariant = "bh1" | "bh2";
export const UNIPC_VARIANTS: readonly UniPCVariant[] = ["bh1", "bh2"];
/** sample_unipc's default, which sample_hunyuan (and so the demos) use. */
export const DEFAULT_UNIPC_VARIANT: UniPCVariant = "bh1";

const f = Math.fround;

/** The denoised prediction at sigma (float32) for latents x; `step` is the 0-based model evaluation. */
export type DenoisedFn = (x: F32, sigma: number, step: number) => Promise<F32>;

export interface UniPCObserver {
  /** After each step: the latents x and the newest denoised prediction (the callback's 'x' and 'denoised'). */
  onStep?(step: number, x: F32, denoised: F32): void;
  signal?: AbortSignal;
}

/** x0 = x - velocity * sigma in float32 (fm_wrapper). */
export function flowToDenoised(x: F32, velocity: F32, sigma: number): F32 {
  if (x.numel !== velocity.numel)
    throw new RangeError(`denoised: latents ${x.describe()} and prediction ${velocity.describe()} differ`);
  const s = f(sigma);
  const out = new Float32Array(x.numel);
  for (let i = 0; i < out.length; i++) out[i] = f(x.data[i]! - f(velocity.data[i]! * s));
  return new Tensor("float32", x.shape, out);
}

/** pred_negative + cfg * (pred_positive - pred_negative), float32. */
export function cfgCombine(pos: F32, neg: F32, scale: number): F32 {
  const s = f(scale);
  const out = new Float32Array(pos.numel);
  for (let i = 0; i < out.length; i++) out[i] = f(neg.data[i]! + f(s * f(pos.data[i]! - neg.data[i]!)));
  return new Tensor("float32", pos.shape, out);
}

/** Unbiased standard deviation over every element of one batch item (torch.std, batch 1). */
function std(t: F32): number {
  const n = t.numel;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += t.data[i]!;
  mean /= n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (t.data[i]! - mean) ** 2;
  return f(Math.sqrt(ss / (n - 1)));
}

/**
 * rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale): 0 returns noise_cfg unchanged.
 * The standard deviations are accumulated in float64 and rounded once.
 */
export function rescaleNoiseCfg(noiseCfg: F32, noisePredText: F32, rescale: number): F32 {
  if (rescale === 0) return noiseCfg;
  const ratio = f(std(noisePredText) / std(noiseCfg));
  const r = f(rescale);
  const keep = f(1 - rescale);
  const out = new Float32Array(noiseCfg.numel);
  for (let i = 0; i < out.length; i++) {
    const c = noiseCfg.data[i]!;
    out[i] = f(f(r * f(c * ratio)) + f(keep * c));
  }
  return new Tensor("float32", noiseCfg.shape, out);
}

/** torch.linalg.solve for a small system as LAPACK sgesv: LU with partial pivoting, in float32. */
export function solveF32(matrix: readonly (readonly number[])[], rhs: readonly number[]): number[] {
  const n = rhs.length;
  const a = matrix.map((row) => row.map((v) => f(v)));
  const b = rhs.map((v) => f(v));
  const piv: number[] = [];
  for (let k = 0; k < n; k++) {
    let p = k;
    for (let i = k + 1; i < n; i++) if (Math.abs(a[i]![k]!) > Math.abs(a[p]![k]!)) p = i;
    piv.push(p);
    if (p !== k) [a[k], a[p]] = [a[p]!, a[k]!];
    const pivot = a[k]![k]!;
    if (pivot === 0) throw new FarmError("INTERNAL", "UniPC: singular coefficient matrix (repeated sigmas?)");
    const inv = f(1 / pivot);
    for (let i = k + 1; i < n; i++) a[i]![k] = f(a[i]![k]! * inv);
    for (let i = k + 1; i < n; i++) for (let j = k + 1; j < n; j++) a[i]![j] = f(a[i]![j]! - f(a[i]![k]! * a[k]![j]!));
  }
  for (let k = 0; k < n; k++) {
    const p = piv[k]!;
    if (p !== k) [b[k], b[p]] = [b[p]!, b[k]!];
  }
  for (let k = 0; k < n; k++) for (let i = k + 1; i < n; i++) b[i] = f(b[i]! - f(b[k]! * a[i]![k]!));
  for (let k = n - 1; k >= 0; k--) {
    if (b[k] !== 0) {
      b[k] = f(b[k]! / a[k]![k]!);
      for (let i = 0; i < k; i++) b[i] = f(b[i]! - f(b[k]! * a[i]![k]!));
    }
  }
  return b;
}

/** The scalar coefficients of one update_fn call. */
export interface UniPCCoefficients {
  /** t / t_prev_0 */
  ratio: number;
  hPhi1: number;
  bH: number;
  /** rk of each older model output (model_prev_list[-(i+1)], i = 1..order-1). */
  rks: number[];
  /** Predictor weights of the D1 terms, or null when there are none. */
  rhosP: number[] | null;
  /** Corrector weights: the D1 terms', then D1_t's last. */
  rhosC: number[];
}

const logF32 = (x: number): number => f(Math.log(x));

/** update_fn's coefficient math for sigmas tPrev (oldest first, newest last) stepping to t. */
export function unipcCoefficients(
  tPrev: readonly number[],
  t: number,
  order: number,
  variant: UniPCVariant,
): UniPCCoefficients {
  if (order < 1 || order > tPrev.length)
    throw new RangeError(`UniPC order ${order} needs as many previous steps, have ${tPrev.length}`);
  const t0 = tPrev[tPrev.length - 1]!;
  const lambda0 = -logF32(t0);
  const lambdaT = -logF32(t);
  const h = f(lambdaT - lambda0);
  const rks: number[] = [];
  for (let i = 1; i < order; i++) {
    const lambdaI = -logF32(tPrev[tPrev.length - 1 - i]!);
    rks.push(f(f(lambdaI - lambda0) / h));
  }
  const rAll = [...rks, 1];
  const hh = -h;
  const hPhi1 = f(Math.expm1(hh));
  let hPhiK = f(f(hPhi1 / hh) - 1);
  let factorial = 1;
  const bH = variant === "bh1" ? hh : hPhi1;
  const R: number[][] = [];
  const b: number[] = [];
  for (let i = 1; i <= order; i++) {
    R.push(rAll.map((r) => (i === 1 ? 1 : i === 2 ? r : f(r ** (i - 1)))));
    b.push(f(f(hPhiK * factorial) / bH));
    factorial *= i + 1;
    hPhiK = f(f(hPhiK / hh) - f(1 / factorial));
  }
  let rhosP: number[] | null = null;
  if (rks.length > 0) {
    rhosP =
      order === 2
        ? [0.5]
        : solveF32(
            R.slice(0, -1).map((row) => row.slice(0, -1)),
            b.slice(0, -1),
          );
  }
  const rhosC = order === 1 ? [0.5] : solveF32(R, b);
  return { ratio: f(t / t0), hPhi1, bH, rks, rhosP, rhosC };
}

/** sum_k d[k] * rho[k] over the D1 terms, float32 (tensordot). */
function weighted(d: readonly Float32Array[], rhos: readonly number[], i: number): number {
  let acc = f(d[0]![i]! * f(rhos[0]!));
  for (let k = 1; k < d.length; k++) acc = f(acc + f(d[k]![i]! * f(rhos[k]!)));
  return acc;
}

/**
 * FlowMatchUniPC.sample(x, sigmas): `sigmas` as the schedule gives them (steps + 1, ending in 0);
 * returns the final denoised prediction.
 */
export async function sampleUniPC(
  model: DenoisedFn,
  noise: F32,
  sigmas: Float32Array,
  variant: UniPCVariant,
  observer: UniPCObserver = {},
): Promise<F32> {
  if (!UNIPC_VARIANTS.includes(variant))
    throw new FarmError("INVALID_ARGUMENT", `UniPC variant must be bh1 or bh2, got ${JSON.stringify(variant)}`);
  const steps = sigmas.length - 1;
  if (steps < 1) throw new RangeError("UniPC needs at least one step");
  const order = Math.min(3, steps - 1);
  let x = noise;
  let models: F32[] = [];
  let ts: number[] = [];
  for (let i = 0; i < steps; i++) {
    observer.signal?.throwIfAborted();
    const t = sigmas[i]!;
    if (i === 0) {
      models = [await model(x, t, i)];
      ts = [t];
    } else {
      const stepOrder = i < order ? i : order;
      const { x: next, model: m } = await update(model, x, models, ts, t, stepOrder, variant, i);
      x = next;
      models.push(m);
      ts.push(t);
    }
    // model_prev_list[-order:]; order 0 (a single step) keeps the whole list, as Python's [-0:].
    if (order > 0) {
      models = models.slice(-order);
      ts = ts.slice(-order);
    }
    observer.onStep?.(i, x, models[models.length - 1]!);
  }
  return models[models.length - 1]!;
}

async function update(
  model: DenoisedFn,
  x: F32,
  models: readonly F32[],
  ts: readonly number[],
  t: number,
  order: number,
  variant: UniPCVariant,
  step: number,
): Promise<{ x: F32; model: F32 }> {
  const c = unipcCoefficients(ts, t, order, variant);
  const n = x.numel;
  const m0 = models[models.length - 1]!.data;
  const d1s: Float32Array[] = c.rks.map((rk, j) => {
    const mi = models[models.length - 2 - j]!.data;
    const d = new Float32Array(n);
    for (let e = 0; e < n; e++) d[e] = f(f(mi[e]! - m0[e]!) / rk);
    return d;
  });
  const base = new Float32Array(n);
  for (let e = 0; e < n; e++) base[e] = f(f(c.ratio * x.data[e]!) - f(c.hPhi1 * m0[e]!));
  const xt = new Float32Array(n);
  if (c.rhosP === null) xt.set(base);
  else for (let e = 0; e < n; e++) xt[e] = f(base[e]! - f(c.bH * weighted(d1s, c.rhosP, e)));
  const modelT = await model(new Tensor("float32", x.shape, xt), t, step);
  const rcLast = f(c.rhosC[c.rhosC.length - 1]!);
  const out = new Float32Array(n);
  for (let e = 0; e < n; e++) {
    const d1t = f(modelT.data[e]! - m0[e]!);
    const corr = d1s.length > 0 ? f(weighted(d1s, c.rhosC, e) + f(rcLast * d1t)) : f(rcLast * d1t);
    out[e] = f(base[e]! - f(c.bH * corr));
  }
  return { x: new Tensor("float32", x.shape, out), model: modelT };
}
