/**
 * The schedule of lllyasviel's FramePack sampler (diffusers_helper/pipelines/k_diffusion_hunyuan.py):
 * flux's time shift with mu from the section's sequence length, over torch.linspace(1, 0, n + 1).
 * Precision follows the source operation by operation:
 *   - calculate_flux_mu: Python floats (float64), min(mu, ln 7);
 *   - torch.linspace(1, 0, n + 1) in float32: step = float32(-1 / n); the first half is
 *     start + step * i, the second half end - step * (n - i), as the CPU kernel rounds them
 *     (see CpuCapability: the last bit of a few sigmas depends on it);
 *   - flux_time_shift(t, mu) = exp(mu) / (exp(mu) + (1 / t - 1) ** 1.0) on that float32 tensor:
 *     a Python-scalar operand is rounded to float32, `scalar / tensor` is torch's
 *     reciprocal(tensor) * scalar, and ** 1.0 is exact.
 * Math.fround after each operation reproduces that rounding.
 */
import { FarmError } from "../errors.js";

const f = Math.fround;

/** calculate_flux_mu(context_length, exp_max=7.0), in float64. */
export function calculateFluxMu(contextLength: number, x1 = 256, y1 = 0.5, x2 = 4096, y2 = 1.15, expMax = 7.0): number {
  const k = (y2 - y1) / (x2 - x1);
  const b = y1 - k * x1;
  return Math.min(k * contextLength + b, Math.log(expMax));
}

/** sample_hunyuan's seq_length: T * H * W // 4 of the section's latents (the 2x2 patch hard-coded). */
export function fluxSeqLength(latentFrames: number, latentHeight: number, latentWidth: number): number {
  return Math.floor((latentFrames * latentHeight * latentWidth) / 4);
}

/**
 * The CPU kernel torch.linspace runs, which decides its last-bit rounding: ATen's linspace is
 * vectorized in chunks of two vectors (`start + step * idx` as the base, then `base + k * step`
 * per lane, each operation rounded, ignoring the halfway switch inside a vector) with the rest
 * done one element at a time, where the AVX2/AVX512 builds contract `a + b * c` into a fused
 * multiply-add. x86-64 builds run
 * AVX2 unless ATEN_CPU_CAPABILITY or the build picks AVX512; "default" is the portable kernel.
 */
export type CpuCapability = "default" | "avx2" | "avx512";
export const DEFAULT_CPU_CAPABILITY: CpuCapability = "avx2";

/** torch.linspace(start, end, steps) in float32, as the given CPU kernel computes it. */
export function linspaceF32(
  start: number,
  end: number,
  steps: number,
  cpu: CpuCapability = DEFAULT_CPU_CAPABILITY,
): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = start;
    return out;
  }
  const s = f(start);
  const e = f(end);
  const step = f(f(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const fused = cpu !== "default";
  // a + b * k and a - b * k for a small integer k: b * k is exact in float64.
  const madd = (a: number, k: number): number => (fused ? f(a + step * k) : f(a + f(step * k)));
  const msub = (a: number, k: number): number => (fused ? f(a - step * k) : f(a - f(step * k)));
  const scalarAt = (idx: number): number => (idx < halfway ? madd(s, idx) : msub(e, steps - idx - 1));
  const lanes = cpu === "avx512" ? 16 : 8;
  let i = 0;
  for (; i + 2 * lanes <= steps; i += 2 * lanes) {
    for (const v of [i, i + lanes]) {
      const base = scalarAt(v);
      // Vectorized<float>::arange builds its lanes as base + k * step, each operation rounded.
      for (let k = 0; k < lanes; k++) out[v + k] = k === 0 ? base : f(base + f(step * k));
    }
  }
  for (; i < steps; i++) out[i] = scalarAt(i);
  return out;
}

/** flux_time_shift(t, mu, 1.0) on a float32 tensor. */
export function fluxTimeShift(t: Float32Array, mu: number): Float32Array {
  const e = f(Math.exp(mu));
  return t.map((x) => {
    const inv = f(1 / x); // reciprocal(t) * 1
    const denom = f(e + f(inv - 1));
    return f(f(1 / denom) * e); // reciprocal(denom) * exp(mu)
  });
}

/**
 * get_flux_sigmas_from_mu(steps, mu): steps + 1 sigmas from (about) 1 down to 0. `shift`, when
 * given, replaces the computed mu with ln(shift) as sample_hunyuan's `shift` argument does.
 */
export function fluxSigmas(
  steps: number,
  seqLength: number,
  options: { shift?: number; cpu?: CpuCapability } = {},
): Float32Array {
  if (!Number.isInteger(steps) || steps < 1)
    throw new FarmError("INVALID_ARGUMENT", `steps must be a positive integer, got ${steps}`);
  const mu = options.shift === undefined ? calculateFluxMu(seqLength) : Math.log(options.shift);
  return fluxTimeShift(linspaceF32(1, 0, steps + 1, options.cpu), mu);
}
