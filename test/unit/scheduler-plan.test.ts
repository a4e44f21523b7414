/** Sigmas, timesteps, section plans and history tensors against the reference runs. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { flowMatchSchedule, calculateShift } from "../../shared/sampler/flow-match.js";
import { planSections, latentPaddings } from "../../shared/framepack/plan.js";
import { initialHistory, sectionContext, appendSection } from "../../shared/framepack/history.js";
import { fadeWeights } from "../../shared/framepack/soft-append.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import type { F32, Tensor } from "../../shared/tensor/tensor.js";
import type { SchedulerConfig, SamplingType } from "../../shared/bundle/manifest.js";
import { REFERENCE_CASES, loadCaseTensors, refTensor } from "../support/reference.js";

const scheduler: SchedulerConfig = {
  class: "FlowMatchEulerDiscreteScheduler",
  num_train_timesteps: 1000,
  shift: 7,
  use_dynamic_shifting: false,
};
const HISTORY: Record<SamplingType, [number, number, number]> = {
  inverted_anti_drifting: [1, 2, 16],
  vanilla: [16, 2, 1],
};

function maxAbs(a: Tensor, b: Tensor): number {
  const x = toFloat64(a);
  const y = toFloat64(b);
  assert.deepEqual(a.shape, b.shape);
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
  return m;
}

for (const name of REFERENCE_CASES) {
  const { params, tensors } = loadCaseTensors(name);
  const samplingType = params["sampling_type"] as SamplingType;
  const w = (params["latent_window_size"] as number | undefined) ?? 9;
  const plan = planSections({
    samplingType,
    numFrames: params["num_frames"] as number,
    latentWindowSize: w,
    hasEndImage: params["last_image"] !== null,
    historySizes: HISTORY[samplingType],
    temporalCompression: 4,
  });

  test(`${name}: schedule matches exactly`, () => {
    const s = flowMatchSchedule(scheduler, params["steps"] as number, (w * 8 * 8) / 4);
    assert.deepEqual([...s.sigmas], [...toFloat64(refTensor(name, "section0.sigmas"))]);
    assert.deepEqual([...s.timesteps], [...toFloat64(refTensor(name, "section0.timesteps"))]);
  });

  test(`${name}: plan indices and output length`, () => {
    const frames = params["frames_shape"] as number[];
    assert.equal(plan.outputFrames, frames[0]);
    for (const section of plan.sections) {
      const k = section.index;
      const ix = section.indices;
      const pre = `section${k}.transformer_in.`;
      assert.deepEqual(ix.latents, [...toFloat64(refTensor(name, `${pre}indices_latents`))]);
      assert.deepEqual(ix.clean, [...toFloat64(refTensor(name, `${pre}indices_latents_clean`))]);
      assert.deepEqual(ix.history2x, [...toFloat64(refTensor(name, `${pre}indices_latents_history_2x`))]);
      assert.deepEqual(ix.history4x, [...toFloat64(refTensor(name, `${pre}indices_latents_history_4x`))]);
    }
    assert.equal(plan.sections.length, [...tensors.keys()].filter((k) => /^section\d+\.noise$/.test(k)).length);
  });

  test(`${name}: history context and decode inputs match`, () => {
    const image = refTensor(name, "image_latents") as F32;
    const last = tensors.has("last_image_latents") ? (refTensor(name, "last_image_latents") as F32) : null;
    const sf = Math.fround(0.476986);
    let history = initialHistory(plan, image);
    for (const section of plan.sections) {
      const k = section.index;
      const ctx = sectionContext(plan, section, history, image, last);
      const pre = `section${k}.transformer_in.`;
      assert.equal(maxAbs(ctx.latentsClean, refTensor(name, `${pre}latents_clean`)), 0);
      assert.equal(maxAbs(ctx.history2x, refTensor(name, `${pre}latents_history_2x`)), 0);
      assert.equal(maxAbs(ctx.history4x, refTensor(name, `${pre}latents_history_4x`)), 0);
      const appended = appendSection(plan, section, history, refTensor(name, `section${k}.latents`) as F32, image);
      history = appended.history;
      const want = refTensor(name, `decode${k}.in`);
      const scaled = appended.decodeLatents.data.map((v) => Math.fround(v / sf));
      assert.deepEqual(appended.decodeLatents.shape, want.shape);
      let m = 0;
      const y = toFloat64(want);
      for (let i = 0; i < y.length; i++) m = Math.max(m, Math.abs(scaled[i]! - y[i]!));
      assert.equal(m, 0, `decode${k}.in differs by ${m}`);
    }
  });
}

test("latent paddings follow FramePack: reversed range, or [3, 2.., 1, 0] beyond 4 sections", () => {
  assert.deepEqual(latentPaddings(1), [0]);
  assert.deepEqual(latentPaddings(4), [3, 2, 1, 0]);
  assert.deepEqual(latentPaddings(6), [3, 2, 2, 2, 1, 0]);
});

test("dynamic shifting caps mu at ln 7", () => {
  const dyn: SchedulerConfig = {
    ...scheduler,
    use_dynamic_shifting: true,
    base_shift: 0.5,
    max_shift: 1.15,
    base_image_seq_len: 256,
    max_image_seq_len: 4096,
    time_shift_type: "exponential",
  };
  const big = flowMatchSchedule(dyn, 4, 1e9);
  const mu = Math.log(7);
  assert.ok(Math.abs(big.sigmas[1]! - Math.exp(mu) / (Math.exp(mu) + (1 / 0.75 - 1))) < 1e-6);
  assert.ok(calculateShift(256) === 0.5);
});

test("fade weights are torch.linspace(1, 0, n)", () => {
  assert.deepEqual([...fadeWeights(5)], [1, 0.75, 0.5, 0.25, 0]);
  assert.equal(fadeWeights(33)[0], 1);
  assert.equal(fadeWeights(33)[32], 0);
});
