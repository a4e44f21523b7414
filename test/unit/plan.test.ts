/** Section plans: indices, decode slices and lengths against the reference runs, and input validation. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { planSections, type PlanInput } from "../../shared/framepack/plan.js";
import { initialHistory, keptHistoryFrames, sectionContext, appendSection } from "../../shared/framepack/history.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import { divScalar, maxAbsDiff } from "../../shared/tensor/ops.js";
import type { F32 } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";
import { listCases, loadCase } from "../support/reference.js";

for (const name of listCases()) {
  const { params, tensors } = loadCase(name);
  const w = params.latent_window_size ?? 9;
  const plan = planSections({
    samplingType: params.sampling_type,
    numFrames: params.num_frames,
    latentWindowSize: w,
    hasEndImage: params.last_image !== null,
  });
  const ref = (key: string): F32 => {
    const t = tensors.get(key);
    assert.ok(t !== undefined, `${name} has no ${key}`);
    return t as F32;
  };

  test(`${name}: indices, section count and output length match diffusers`, () => {
    assert.equal(plan.sections.length, [...tensors.keys()].filter((k) => /^section\d+\.noise$/.test(k)).length);
    assert.equal(plan.outputFrames, params.frames_shape![0]);
    assert.equal(plan.sections.at(-1)!.decode.totalVideoFrames, params.frames_shape![0]);
    for (const s of plan.sections) {
      const pre = `section${s.index}.transformer_in.`;
      assert.deepEqual(s.indices.latents, [...toFloat64(ref(`${pre}indices_latents`))]);
      assert.deepEqual(s.indices.clean, [...toFloat64(ref(`${pre}indices_latents_clean`))]);
      assert.deepEqual(s.indices.history2x, [...toFloat64(ref(`${pre}indices_latents_history_2x`))]);
      assert.deepEqual(s.indices.history4x, [...toFloat64(ref(`${pre}indices_latents_history_4x`))]);
      assert.equal(ref(`section${s.index}.noise`).shape[2], w);
    }
  });

  test(`${name}: history context tensors and decode inputs are exact`, () => {
    const image = ref("image_latents");
    const last = params.last_image !== null ? ref("last_image_latents") : null;
    let history = initialHistory(plan, image);
    for (const s of plan.sections) {
      const k = s.index;
      const ctx = sectionContext(plan, s, history, image, last);
      const pre = `section${k}.transformer_in.`;
      assert.equal(maxAbsDiff(ctx.latentsClean, ref(`${pre}latents_clean`)), 0, `${pre}latents_clean`);
      assert.equal(maxAbsDiff(ctx.history2x, ref(`${pre}latents_history_2x`)), 0, `${pre}latents_history_2x`);
      assert.equal(maxAbsDiff(ctx.history4x, ref(`${pre}latents_history_4x`)), 0, `${pre}latents_history_4x`);
      const out = appendSection(plan, s, history, ref(`section${k}.latents`), image);
      history = out.history;
      assert.equal(out.history.generated, s.decode.realHistoryFrames);
      assert.ok(out.history.latents.shape[2]! <= keptHistoryFrames(plan), "the history stays bounded");
      assert.equal(out.decodeLatents.shape[2], s.decode.latentFrames);
      const want = tensors.get(`decode${k}.in`);
      if (want !== undefined)
        assert.equal(maxAbsDiff(divScalar(out.decodeLatents, 0.476986), want), 0, `decode${k}.in`);
      if (tensors.has(`decode${k}.out`)) assert.equal(tensors.get(`decode${k}.out`)!.shape[2], s.decode.videoFrames);
    }
  });
}

test("decode plan of a long inverted video: paddings [3, 2, 2, 1, 0], lengths and joins", () => {
  const plan = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 33 * 5,
    latentWindowSize: 9,
    hasEndImage: true,
  });
  assert.deepEqual(
    plan.sections.map((s) => s.latentPadding),
    [27, 18, 18, 9, 0],
  );
  assert.deepEqual(
    plan.sections.map((s) => s.decode.latentFrames),
    [9, 18, 18, 18, 19],
  );
  assert.deepEqual(
    plan.sections.map((s) => s.decode.realHistoryFrames),
    [9, 18, 27, 36, 46],
  );
  assert.deepEqual(
    plan.sections.map((s) => s.decode.overlapFrames),
    [0, 33, 33, 33, 33],
  );
  assert.deepEqual(
    plan.sections.map((s) => s.useEndImage),
    [true, false, false, false, false],
  );
  assert.deepEqual(
    plan.sections.map((s) => s.prefixStartImage),
    [false, false, false, false, true],
  );
  assert.equal(plan.outputFrames, 4 * 5 * 9 + 1);
  assert.ok(plan.sections.every((s) => s.decode.join === "prepend" && s.historyFrom === "start"));
});

test("single-section plans: the inverted one prefixes the start image and decodes it all", () => {
  const inv = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 1,
    latentWindowSize: 9,
    hasEndImage: false,
  });
  assert.equal(inv.sections.length, 1);
  assert.deepEqual(inv.sections[0]!.decode, {
    realHistoryFrames: 10,
    latentFrames: 10,
    from: "start",
    videoFrames: 37,
    overlapFrames: 0,
    join: "prepend",
    totalVideoFrames: 37,
    videoPrefix: 0,
  });
  const van = planSections({ samplingType: "vanilla", numFrames: 33, latentWindowSize: 9, hasEndImage: false });
  assert.deepEqual(van.sections[0]!.decode, {
    realHistoryFrames: 10,
    latentFrames: 10,
    from: "end",
    videoFrames: 37,
    overlapFrames: 0,
    join: "append",
    totalVideoFrames: 37,
    videoPrefix: 0,
  });
  assert.deepEqual(van.sections[0]!.indices.latents, [20, 21, 22, 23, 24, 25, 26, 27, 28]);
});

test("bad inputs are INVALID_ARGUMENT naming the parameter", () => {
  const base: PlanInput = { samplingType: "vanilla", numFrames: 33, latentWindowSize: 9, hasEndImage: false };
  const bad = (input: PlanInput, word: string): void =>
    assert.throws(
      () => planSections(input),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && e.message.includes(word),
      word,
    );
  bad({ ...base, numFrames: 0 }, "num_frames");
  bad({ ...base, numFrames: 2.5 }, "num_frames");
  bad({ ...base, latentWindowSize: 0 }, "window");
  bad({ ...base, latentWindowSize: Number.NaN }, "window");
  bad({ ...base, samplingType: "sideways" as PlanInput["samplingType"] }, "sampling_type");
  bad({ ...base, hasEndImage: true }, "end image");
  bad({ ...base, historySizes: [16, 0, 1] }, "history_sizes[1]");
  bad({ ...base, temporalCompression: 0 }, "temporal_compression");
});
