/**
 * FlowMatchEulerDiscreteScheduler as the FramePack pipeline drives it: set_timesteps(sigmas=...,
 * mu=...) and the Euler step. Precision follows the sources stage by stage:
 *   1. pipeline: np.linspace(1, 0, steps + 1)[:-1] in float64 (i * (-1/steps) + 1);
 *   2. scheduler: np.array(sigmas).astype(float32); the static or dynamic shift and shift_terminal
 *      are float32 numpy arithmetic, a Python float operand being rounded to float32 first (NumPy's
 *      weak scalars); calculate_shift, min(mu, ln 7) and exp(mu) stay float64 until then;
 *   3. torch.from_numpy(...).float32; timesteps = sigmas * num_train_timesteps in float32;
 *      invert_sigmas (1 - sigmas) in float32; a terminal 0 (or 1 when inverted) is appended;
 *   4. step: dt = sigmas[i+1] - sigmas[i] (float32), prev = sample + dt * model_output, each
 *      operation rounded to float32.
 * Math.fround after each operation reproduces that rounding exactly.
 */
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { SchedulerConfig } from "../bundle/manifest.js";

export interface FlowMatchSchedule {
  /** steps + 1 values, ending in 0 (1 with invert_sigmas). */
  sigmas: Float32Array;
  /** steps values: sigmas[i] * num_train_timesteps. */
  timesteps: Float32Array;
}

const f = Math.fround;

/** The pipeline's calculate_shift (flux): linear in the image sequence length, in float64. */
export function calculateShift(
  imageSeqLen: number,
  baseSeqLen = 256,
  maxSeqLen = 4096,
  baseShift = 0.5,
  maxShift = 1.15,
): number {
  const m = (maxShift - baseShift) / (maxSeqLen - baseSeqLen);
  const b = baseShift - m * baseSeqLen;
  return imageSeqLen * m + b;
}

/** The pipeline's image_seq_len: latent T * h * w / patch_size^2 (a Python true division). */
export function imageSeqLen(
  latentFrames: number,
  latentHeight: number,
  latentWidth: number,
  patchSize: number,
): number {
  return (latentFrames * latentHeight * latentWidth) / patchSize ** 2;
}

/** mu as the pipeline passes it: calculate_shift from the scheduler config, capped at ln 7. */
export function pipelineMu(config: SchedulerConfig, seqLen: number): number {
  const mu = calculateShift(
    seqLen,
    config.base_image_seq_len ?? 256,
    config.max_image_seq_len ?? 4096,
    config.base_shift ?? 0.5,
    config.max_shift ?? 1.15,
  );
  return Math.min(mu, Math.log(7));
}

const UNSUPPORTED = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"] as const;

function checkConfig(config: SchedulerConfig): void {
  for (const k of UNSUPPORTED) {
    if (config[k] === true)
      throw new FarmError(
        "FAILED_PRECONDITION",
        `scheduler option ${k} is not supported by the farm's FlowMatch Euler sampler`,
      );
  }
  if (!Number.isInteger(config.num_train_timesteps) || config.num_train_timesteps < 1) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `scheduler num_train_timesteps must be a positive integer, got ${config.num_train_timesteps}`,
    );
  }
  if (!config.use_dynamic_shifting && !(Number.isFinite(config.shift) && config.shift > 0)) {
    throw new FarmError("FAILED_PRECONDITION", `scheduler shift must be a positive number, got ${config.shift}`);
  }
  const type = config.time_shift_type ?? "exponential";
  if (type !== "exponential" && type !== "linear")
    throw new FarmError("FAILED_PRECONDITION", `scheduler time_shift_type ${JSON.stringify(type)} is not supported`);
  const terminal = config.shift_terminal;
  if (terminal !== undefined && terminal !== null && !(Number.isFinite(terminal) && terminal < 1)) {
    throw new FarmError("FAILED_PRECONDITION", `scheduler shift_terminal must be below 1, got ${terminal}`);
  }
}

/**
 * The schedule of one section. `seqLen` is the image_seq_len of the section's latents (see
 * imageSeqLen); it only matters with use_dynamic_shifting.
 */
export function flowMatchSchedule(config: SchedulerConfig, steps: number, seqLen: number): FlowMatchSchedule {
  if (!Number.isInteger(steps) || steps < 1)
    throw new FarmError("INVALID_ARGUMENT", `steps must be a positive integer, got ${steps}`);
  checkConfig(config);
  // np.linspace(1.0, 0.0, steps + 1)[:-1] in float64, then .astype(np.float32)
  const step = -1 / steps;
  let sigmas = Float32Array.from({ length: steps }, (_, i) => i * step + 1);
  if (config.use_dynamic_shifting) {
    const mu = pipelineMu(config, seqLen);
    // time_shift(mu, 1.0, t) = e / (e + (1/t - 1) ** 1.0); ** 1.0 is exact.
    const e = f(config.time_shift_type === "linear" ? mu : Math.exp(mu));
    sigmas = sigmas.map((t) => f(e / f(e + f(f(1 / t) - 1))));
  } else {
    const shift = f(config.shift);
    const shiftMinus1 = f(config.shift - 1);
    sigmas = sigmas.map((s) => f(f(shift * s) / f(1 + f(shiftMinus1 * s))));
  }
  const terminal = config.shift_terminal;
  // `if self.config.shift_terminal:` — None and 0 both skip the stretch.
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
  if (sample.numel !== modelOutput.numel)
    throw new RangeError(`euler step: sample ${sample.describe()} and model output ${modelOutput.describe()} differ`);
  const dt = f(f(sigmaNext) - f(sigma));
  const out = new Float32Array(sample.numel);
  for (let i = 0; i < out.length; i++) out[i] = f(sample.data[i]! + f(dt * modelOutput.data[i]!));
  return new Tensor("float32", sample.shape, out);
}

/** A schedule with its step, indexed by step number as the pipeline's loop is. */
export class FlowMatchEulerScheduler {
  readonly sigmas: Float32Array;
  readonly timesteps: Float32Array;

  constructor(config: SchedulerConfig, steps: number, seqLen: number) {
    const s = flowMatchSchedule(config, steps, seqLen);
    this.sigmas = s.sigmas;
    this.timesteps = s.timesteps;
  }

  get steps(): number {
    return this.timesteps.length;
  }

  /** The latents after step i (0-based) given the model's velocity prediction. */
  step(modelOutput: F32, sample: F32, i: number): F32 {
    if (!Number.isInteger(i) || i < 0 || i >= this.steps)
      throw new RangeError(`step index ${i} outside 0..${this.steps - 1}`);
    return eulerStep(sample, modelOutput, this.sigmas[i]!, this.sigmas[i + 1]!);
  }
}
