/**
 * Plans that extend a video (FramePack-Studio's Video F1 and Video contexts): indices, context
 * tensors, decode inputs and lengths against framefarm's video reference cases (made by
 * framefarm_export.video_cases), and what the plan refuses.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { planSections } from "../../shared/framepack/plan.js";
import { appendSection, initialHistory, keptHistoryFrames, sectionContext } from "../../shared/framepack/history.js";
import { availableLatentFrames, videoLatentFrames } from "../../shared/framepack/video-context.js";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import { divScalar, maxAbsDiff } from "../../shared/tensor/ops.js";
import type { F32 } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";
import { repoRoot } from "../support/paths.js";

const dir = path.join(repoRoot(), "test", "fixtures", "reference-cases");
const cases = readdirSync(dir).filter((f) => /^video_.*\.json$/.test(f));

test("the video reference cases are there", () => assert.ok(cases.length >= 2, cases.join(", ")));

for (const file of cases) {
  const name = file.slice(0, -5);
  const params = JSON.parse(readFileSync(path.join(dir, file), "utf8")) as Record<string, unknown> & {
    sampling_type: "vanilla" | "inverted_anti_drifting";
    input_video: { frames: number; latent_frames: number; encoded_frames: number };
    frames_shape: number[];
  };
  const tensors = decodeSafetensors(readFileSync(path.join(dir, `${name}.safetensors`))).tensors;
  const ref = (key: string): F32 => {
    const t = tensors.get(key);
    assert.ok(t !== undefined, `${name} has no ${key}`);
    return t as F32;
  };
  const w = params["latent_window_size"] as number;
  const plan = planSections({
    samplingType: params.sampling_type,
    numFrames: params["num_frames"] as number,
    latentWindowSize: w,
    hasEndImage: params["last_image"] !== null,
    sectionCount: params["sampler"] === "unipc" ? "demo" : "diffusers",
    video: { inputFrames: params.input_video.frames, contextFrames: params["context_frames"] as number },
  });

  test(`${name}: encoded frames, indices, section count and output length match the reference`, () => {
    assert.equal(plan.video!.latentFrames, params.input_video.latent_frames);
    assert.equal(plan.video!.encodedFrames, params.input_video.encoded_frames);
    assert.equal(plan.video!.firstEncodedFrame, params.input_video.frames - params.input_video.encoded_frames);
    assert.equal(plan.sections.length, [...tensors.keys()].filter((k) => /^section\d+\.noise$/.test(k)).length);
    assert.equal(plan.outputFrames, params.frames_shape[0]);
    assert.equal(plan.sections.at(-1)!.decode.totalVideoFrames, params.frames_shape[0]);
    for (const s of plan.sections) {
      const pre = `section${s.index}.transformer_in.`;
      assert.deepEqual(s.indices.latents, [...toFloat64(ref(`${pre}indices_latents`))]);
      assert.deepEqual(s.indices.clean, [...toFloat64(ref(`${pre}indices_latents_clean`))]);
      assert.deepEqual(s.indices.history2x, [...toFloat64(ref(`${pre}indices_latents_history_2x`))]);
      assert.deepEqual(s.indices.history4x, [...toFloat64(ref(`${pre}indices_latents_history_4x`))]);
    }
  });

  test(`${name}: context tensors and decode inputs are exact`, () => {
    const video = ref("video_latents");
    const last = params["last_image"] !== null ? ref("last_image_latents") : null;
    let history = initialHistory(plan, video);
    for (const s of plan.sections) {
      const k = s.index;
      const ctx = sectionContext(plan, s, history, video, last);
      const pre = `section${k}.transformer_in.`;
      assert.equal(maxAbsDiff(ctx.latentsClean, ref(`${pre}latents_clean`)), 0, `${pre}latents_clean`);
      assert.equal(maxAbsDiff(ctx.history2x, ref(`${pre}latents_history_2x`)), 0, `${pre}latents_history_2x`);
      assert.equal(maxAbsDiff(ctx.history4x, ref(`${pre}latents_history_4x`)), 0, `${pre}latents_history_4x`);
      const out = appendSection(plan, s, history, ref(`section${k}.latents`), video);
      history = out.history;
      assert.equal(out.history.generated, s.decode.realHistoryFrames);
      assert.ok(out.history.latents.shape[2]! <= Math.max(keptHistoryFrames(plan), plan.video!.latentFrames + w));
      assert.equal(out.decodeLatents.shape[2], s.decode.latentFrames);
      assert.equal(maxAbsDiff(divScalar(out.decodeLatents, 0.476986), ref(`decode${k}.in`)), 0, `decode${k}.in`);
      if (tensors.has(`decode${k}.out`)) assert.equal(ref(`decode${k}.out`).shape[2], s.decode.videoFrames);
    }
  });
}

test("a video's latents: all it has up to Studio's 27 (or the window), from its last (L - 1) * 4 + 1 frames", () => {
  assert.equal(availableLatentFrames(50, 4), 13);
  assert.equal(videoLatentFrames(50, 9, 4), 13);
  assert.equal(videoLatentFrames(1000, 9, 4), 27);
  assert.equal(videoLatentFrames(1000, 33, 4), 33);
  const plan = planSections({
    samplingType: "vanilla",
    numFrames: 90,
    latentWindowSize: 9,
    hasEndImage: false,
    video: { inputFrames: 200, contextFrames: 5 },
  });
  assert.deepEqual(plan.video, {
    inputFrames: 200,
    contextFrames: 5,
    latentFrames: 27,
    encodedFrames: 105,
    firstEncodedFrame: 95,
    joinFrames: 33,
  });
  // Each section adds 4w frames after the input; no section decodes all its history.
  assert.equal(plan.outputFrames, 200 + 3 * 36);
  assert.deepEqual(
    plan.sections.map((s) => [s.decode.latentFrames, s.decode.overlapFrames]),
    [
      [18, 33],
      [18, 33],
      [18, 33],
    ],
  );
  assert.deepEqual(plan.historySizes, [16, 2, 4]);
});

test("inverted, toward an end image: 1 pre frame next to the input, the end image after the first window", () => {
  const plan = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 33 * 5,
    latentWindowSize: 9,
    hasEndImage: true,
    video: { inputFrames: 120, contextFrames: 3 },
  });
  assert.deepEqual(
    plan.sections.map((s) => s.videoContext),
    [
      { pre: 2, post: 1, postFrom: "end_image" },
      { pre: 2, post: 2, postFrom: "history" },
      { pre: 2, post: 2, postFrom: "history" },
      { pre: 2, post: 2, postFrom: "history" },
      { pre: 1, post: 1, postFrom: "history" },
    ],
  );
  assert.deepEqual(plan.sections[4]!.indices.clean, [0, 10]);
  assert.deepEqual(plan.sections[0]!.indices.latents, [29, 30, 31, 32, 33, 34, 35, 36, 37]);
  assert.deepEqual(
    plan.sections.map((s) => [s.decode.videoPrefix, s.decode.latentFrames, s.decode.overlapFrames]),
    [
      [0, 9, 0],
      [0, 18, 33],
      [0, 18, 33],
      [0, 18, 33],
      [9, 27, 33],
    ],
  );
  assert.equal(plan.outputFrames, 120 + 5 * 36);
});

test("a video too short for the context or the window is refused", () => {
  const base = { samplingType: "vanilla", numFrames: 30, latentWindowSize: 9, hasEndImage: false } as const;
  assert.throws(
    () => planSections({ ...base, video: { inputFrames: 32, contextFrames: 5 } }),
    (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /32 frames/.test(e.message),
  );
  planSections({ ...base, video: { inputFrames: 33, contextFrames: 5 } });
  assert.throws(() => planSections({ ...base, latentWindowSize: 3, video: { inputFrames: 33, contextFrames: 10 } }));
  planSections({ ...base, latentWindowSize: 3, video: { inputFrames: 37, contextFrames: 10 } });
});
