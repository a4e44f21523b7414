/**
 * FlowMatchEulerDiscreteScheduler as the FramePack pipeline drives it: sigmas from
 * linspace(1, 0, steps + 1)[:-1], shifted statically or dynamically (mu from the sequence length),
 * timesteps = sigmas * num_train_timesteps, and the Euler update x + (sigma_next - sigma) * v.
 * diffusers does this arithmetic on float32 numpy arrays and tensors, so every operation here is
 * rounded to float32 (Math.fround) in the same order.
 */
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { SchedulerConfig } from "../bundle/manifest.js";

export interface FlowMatchSchedule {
  /** steps + 1 values, ending in 0. */
  sigmas: Float32Array;
  /** steps values. */
  timesteps: Float32Array;
}

const f = Math.fround;

/** The pipeline's calculate_shift (flux): linear in the image sequence length. */
export function calculateShift(imageSeqLen: number, baseSeqLen = 256, maxSeqLen = 4096, baseShift = 0.5, maxShift = 1.15): number {
  const m = (maxShift - baseShift) / (maxSeqLen - baseSeqLen);
  const b = baseShift - m * baseSeqLen;
  return imageSeqLen * m + b;
}

export function flowMatchSchedule(config: SchedulerConfig, steps: number, imageSeqLen: number): FlowMatchSchedule {
  if (!Number.isInteger(steps) || steps < 1) throw new FarmError("INVALID_ARGUMENT", `steps must be a positive integer, got ${steps}`);
  for (const k of ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"] as const) {
    if (config[k] === true) throw new FarmError("FAILED_PRECONDITION", `scheduler option ${k} is not supported`);
  }
  // np.linspace(1.0, 0.0, steps + 1)[:-1] in float64, then .astype(np.float32)
  let sigmas = Float32Array.from({ length: steps }, (_, i) => 1 + i * (-1 / steps));
  const shift = config.shift;
  if (config.use_dynamic_shifting) {
    // The pipeline caps mu at ln(7).
    const mu = Math.min(
      calculateShift(imageSeqLen, config.base_image_seq_len ?? 256, config.max_image_seq_len ?? 4096, config.base_shift ?? 0.5, config.max_shift ?? 1.15),
      Math.log(7),
    );
    const linear = config.time_shift_type === "linear";
    // A Python float meeting a float32 array is cast to float32 first (NumPy 2 weak scalars).
    const e = f(linear ? mu : Math.exp(mu));
    sigmas = sigmas.map((t) => f(e / f(e + f(f(1 / t) - 1))));
  } else {
    sigmas = sigmas.map((s) => f(f(shift * s) / f(1 + f((shift - 1) * s))));
  }
  const terminal = config.shift_terminal;
  if (typeof terminal === "number" && terminal !== 0) {
    const last = f(1 - sigmas[sigmas.length - 1]!);
    const scale = f(last / f(1 - terminal));
    sigmas = sigmas.map((t) => f(1 - f(f(1 - t) / scale)));
  }
  const n = config.num_train_timesteps;
  const invert = config.invert_sigmas === true;
  const base = invert ? sigmas.map((s) => f(1 - s)) : sigmas;
  const timesteps = base.map((s) => f(s * n));
  const all = new Float32Array(steps + 1);
  all.set(base);
  all[steps] = invert ? 1 : 0;
  return { sigmas: all, timesteps };
}

/** prev = sample + (sigma_next - sigma) * modelOutput, in float32. */
export function eulerStep(sample: F32, modelOutput: F32, sigma: number, sigmaNext: number): F32 {
  const dt = f(sigmaNext - sigma);
  const out = new Float32Array(sample.numel);
  for (let i = 0; i < out.length; i++) out[i] = f(sample.data[i]! + f(dt * modelOutput.data[i]!));
  return new Tensor("float32", sample.shape, out);
}
