/** FlowMatch Euler: the reference schedules bit for bit, the config variants, and the step. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FlowMatchEulerScheduler,
  flowMatchSchedule,
  imageSeqLen,
  pipelineMu,
} from "../../shared/sampler/flow-match.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import type { SchedulerConfig } from "../../shared/bundle/manifest.js";
import { FarmError } from "../../shared/errors.js";
import { listCases, loadCase } from "../support/reference.js";

const STATIC: SchedulerConfig = {
  class: "FlowMatchEulerDiscreteScheduler",
  num_train_timesteps: 1000,
  shift: 7,
  use_dynamic_shifting: false,
};
const DYNAMIC: SchedulerConfig = {
  ...STATIC,
  use_dynamic_shifting: true,
  base_shift: 0.5,
  max_shift: 1.15,
  base_image_seq_len: 256,
  max_image_seq_len: 4096,
};

for (const name of listCases()) {
  test(`${name}: every section's sigmas and timesteps are bit-identical`, () => {
    const { params, tensors } = loadCase(name);
    const w = params.latent_window_size ?? 9;
    const s = new FlowMatchEulerScheduler(STATIC, params.steps, imageSeqLen(w, params.height / 8, params.width / 8, 2));
    for (let k = 0; tensors.has(`section${k}.sigmas`); k++) {
      assert.deepEqual(s.sigmas, tensors.get(`section${k}.sigmas`)!.data);
      assert.deepEqual(s.timesteps, tensors.get(`section${k}.timesteps`)!.data);
    }
  });
}

const f = Math.fround;

test("dynamic shifting: exponential and linear time shift in float32, mu capped at ln 7", () => {
  const seq = imageSeqLen(9, 80, 80, 2);
  assert.equal(seq, 14400);
  const mu = pipelineMu(DYNAMIC, seq);
  assert.equal(mu, Math.log(7)); // 14400 tokens would give mu > ln 7
  const small = pipelineMu(DYNAMIC, 256);
  assert.equal(small, 0.5);
  const exp = flowMatchSchedule(DYNAMIC, 4, 256).sigmas;
  const e = f(Math.exp(0.5));
  assert.deepEqual(
    [...exp],
    [1, f(e / f(e + f(f(1 / f(0.75)) - 1))), f(e / f(e + f(f(1 / 0.5) - 1))), f(e / f(e + f(f(1 / 0.25) - 1))), 0],
  );
  const lin = flowMatchSchedule({ ...DYNAMIC, time_shift_type: "linear" }, 2, 256).sigmas;
  assert.deepEqual([...lin], [1, f(f(0.5) / f(f(0.5) + 1)), 0]);
});

test("shift_terminal stretches the end; invert_sigmas flips and ends at 1", () => {
  const t = flowMatchSchedule({ ...STATIC, shift: 1, shift_terminal: 0.1 }, 4, 0);
  assert.ok(Math.abs(t.sigmas[3]! - 0.1) < 1e-7); // float32 arithmetic lands within an ulp of 0.1
  assert.equal(t.sigmas[0], 1);
  const inv = flowMatchSchedule({ ...STATIC, shift: 1, invert_sigmas: true }, 4, 0);
  assert.deepEqual([...inv.sigmas], [0, 0.25, 0.5, 0.75, 1]);
  assert.deepEqual([...inv.timesteps], [0, 250, 500, 750]);
});

test("unsupported scheduler options and bad steps are refused clearly", () => {
  for (const k of ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"]) {
    assert.throws(
      () => flowMatchSchedule({ ...STATIC, [k]: true }, 4, 0),
      (e: unknown) => e instanceof FarmError && e.message.includes(k),
    );
  }
  assert.throws(
    () => flowMatchSchedule({ ...STATIC, time_shift_type: "cosine" as "linear", use_dynamic_shifting: true }, 4, 0),
    FarmError,
  );
  assert.throws(
    () => flowMatchSchedule(STATIC, 0, 0),
    (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT",
  );
});

test("step: sample + (sigma[i+1] - sigma[i]) * v in float32, per step index", () => {
  const s = new FlowMatchEulerScheduler(STATIC, 5, 0);
  const x = Tensor.f32([3], [0.1, -2, 3]);
  const v = Tensor.f32([3], [1, 0.5, -0.25]);
  const dt = f(s.sigmas[2]! - s.sigmas[1]!);
  assert.deepEqual(
    [...s.step(v, x, 1).data],
    [...x.data].map((xi, i) => f(xi + f(dt * v.data[i]!))),
  );
  assert.throws(() => s.step(v, x, 5), RangeError);
  // Integrating a constant velocity over all steps moves the sample by exactly -v up to rounding.
  let y = x;
  for (let i = 0; i < s.steps; i++) y = s.step(v, y, i);
  y.data.forEach((yi, i) => assert.ok(Math.abs(yi - (x.data[i]! - v.data[i]!)) < 1e-6));
});
