/** Prompts that change over time: parsing, refusals, section mapping in both modes, blending. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { FarmError } from "../../shared/errors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { planSections } from "../../shared/framepack/plan.js";
import {
  blendEmbeddings,
  parseTimedPrompt,
  promptSchedule,
  sectionEmbeddings,
  videoTimeIndex,
} from "../../shared/job/timed-prompts.js";
import { validateRenderParams } from "../../shared/job/render-params.js";

const refused = (fn: () => unknown, pattern: RegExp): void => {
  assert.throws(
    fn,
    (err: unknown) => err instanceof FarmError && err.status === "INVALID_ARGUMENT" && pattern.test(err.message),
  );
};

test("a plain prompt is not timed; a timed one reads FramePack-Studio's syntax", () => {
  assert.equal(parseTimedPrompt("A sign reading [OPEN] on a door", 5), null);
  assert.deepEqual(parseTimedPrompt("[0s: a man waves] [2s: he turns away]", 5), [
    { start: 0, end: 2, prompt: "a man waves" },
    { start: 2, end: 5, prompt: "he turns away" },
  ]);
  assert.deepEqual(parseTimedPrompt("  [0s-1.5s:  a]\n[1.5s : b ]  [3.25s-5s: c]", 5), [
    { start: 0, end: 1.5, prompt: "a" },
    { start: 1.5, end: 3.25, prompt: "b" },
    { start: 3.25, end: 5, prompt: "c" },
  ]);
});

test("bad timed prompts are refused, naming the problem", () => {
  refused(() => parseTimedPrompt("[0s: a] [6s: b]", 5), /6s starts at or after the video's end \(5s\)/);
  refused(() => parseTimedPrompt("[0s: a] [2s-7s: b]", 5), /2s-7s ends after the video's end/);
  refused(() => parseTimedPrompt("[0s-3s: a] [2s: b]", 5), /0s-3s overlaps the one starting at 2s/);
  refused(() => parseTimedPrompt("[0s: a] [2s: b] [2s: c]", 5), /at 2s and 2s overlap/);
  refused(() => parseTimedPrompt("[0s: a] [3s: b] [2s: c]", 5), /3s and 2s overlap/);
  refused(() => parseTimedPrompt("[1s: a] [2s: b]", 5), /first timed prompt starts at 1s/);
  refused(() => parseTimedPrompt("[0s-1s: a] [2s: b]", 5), /nothing is prompted from 1s to 2s/);
  refused(() => parseTimedPrompt("[0s-4s: a]", 5), /nothing is prompted from 4s to the video's end/);
  refused(() => parseTimedPrompt("[0s: a] and then [2s: b]", 5), /cannot read the timed prompt at character 9/);
  refused(() => parseTimedPrompt("[0s: a] [2x: b]", 5), /cannot read the timed prompt/);
  refused(() => parseTimedPrompt("[0s: a] [2s: ]", 5), /2s has no text/);
  refused(() => parseTimedPrompt("[0s-0s: a]", 5), /ends before it starts/);
  refused(() => parseTimedPrompt("[0s: a", 5), /cannot read/);
});

const params = (prompt: string, extra: Record<string, unknown> = {}) =>
  validateRenderParams(
    { prompt, numFrames: 45, latentWindowSize: 3, steps: 2, height: 64, width: 64, ...extra },
    { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
  );

test("sections take the prompt in force at their middle; inverted plans run from the end back", () => {
  // window 3: 12 pixel frames (0.4 s at 30 fps) per section; 45 frames = 5 diffusers sections.
  const p = params("[0s: A] [0.8s: B]");
  const inverted = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 45,
    latentWindowSize: 3,
    hasEndImage: false,
  });
  assert.equal(inverted.sections.length, 5);
  const s = promptSchedule(p, inverted);
  assert.deepEqual(s.prompts, ["A", "B"]);
  // video time: mids 0.2, 0.6, 1.0, 1.4, 1.8 -> A A B B B; plan order is reversed.
  assert.deepEqual(
    s.sections.map((x) => s.prompts[x.prompt]),
    ["B", "B", "B", "A", "A"],
  );
  assert.equal(videoTimeIndex(inverted, 0), 4);
  const vanilla = planSections({ samplingType: "vanilla", numFrames: 45, latentWindowSize: 3, hasEndImage: false });
  assert.deepEqual(
    promptSchedule(p, vanilla).sections.map((x) => x.prompt),
    [0, 0, 1, 1, 1],
  );
});

test("blending: the B sections from a change mix the two prompts with alpha (i + 1) / (B + 1)", () => {
  const vanilla = planSections({ samplingType: "vanilla", numFrames: 45, latentWindowSize: 3, hasEndImage: false });
  const s = promptSchedule(params("[0s: A] [0.8s: B]", { promptBlendSections: 2 }), vanilla);
  assert.deepEqual(s.sections, [
    { prompt: 0 },
    { prompt: 0 },
    { prompt: 1, blendFrom: 0, alpha: 1 / 3 },
    { prompt: 1, blendFrom: 0, alpha: 2 / 3 },
    { prompt: 1 },
  ]);
  refused(() => params("a plain prompt", { promptBlendSections: 1 }), /needs a timed prompt/);
  refused(
    () => params("[0s: A]", { promptBlendSections: 33 }),
    /prompt blend sections must be an integer from 0 to 32/,
  );
});

test("section prompts: one per section in video-time order, each distinct prompt once", () => {
  const p = params("", { sectionPrompts: ["x", "y", "x", "z", "z"] });
  const inverted = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 45,
    latentWindowSize: 3,
    hasEndImage: false,
  });
  const s = promptSchedule(p, inverted);
  assert.deepEqual(s.prompts, ["x", "y", "z"]);
  assert.deepEqual(
    s.sections.map((x) => x.prompt),
    [2, 2, 0, 1, 0],
  );
  refused(
    () => promptSchedule(params("", { sectionPrompts: ["x", "y"] }), inverted),
    /2 section prompts given, but the video has 5 sections/,
  );
  refused(() => params("also a prompt", { sectionPrompts: ["x"] }), /either a prompt or section prompts/);
  refused(() => params("", { sectionPrompts: ["x", ""] }), /section prompt 2 must not be empty/);
  refused(() => params(""), /prompt must not be empty/);
});

test("blendEmbeddings: padding zeroed, masks united, float32 arithmetic", () => {
  const f = Math.fround;
  const a = {
    embeds: Tensor.f32([1, 3, 2], [1, 2, 3, 4, 9, 9]),
    mask: Tensor.f32([1, 3], [1, 1, 0]),
    pooled: Tensor.f32([1, 2], [1, -1]),
  };
  const b = {
    embeds: Tensor.f32([1, 3, 2], [5, 6, 7, 8, 0.5, 0.25]),
    mask: Tensor.f32([1, 3], [1, 1, 1]),
    pooled: Tensor.f32([1, 2], [3, 3]),
  };
  const m = blendEmbeddings(a, b, 1 / 3);
  const k = f(1 - 1 / 3);
  const t = f(1 / 3);
  assert.deepEqual([...m.mask.data], [1, 1, 1]);
  assert.deepEqual(
    [...m.embeds.data],
    [1, 2, 3, 4, 0, 0].map((x, i) => f(f(k * x) + f(t * b.embeds.data[i]!))),
  );
  assert.deepEqual([...m.pooled.data], [f(f(k * 1) + f(t * 3)), f(f(k * -1) + f(t * 3))]);
  const schedule = { prompts: ["a", "b"], sections: [{ prompt: 1, blendFrom: 0, alpha: 1 / 3 }, { prompt: 0 }] };
  assert.deepEqual(sectionEmbeddings(schedule, 0, [a, b]).embeds.data, m.embeds.data);
  assert.equal(sectionEmbeddings(schedule, 1, [a, b]), a);
});

test("unipc options are checked; the demo's section count and true-CFG rule", () => {
  const base = { prompt: "p", numFrames: 150, steps: 2, height: 64, width: 64 };
  const d = { samplingType: "inverted_anti_drifting" as const, latentWindowSize: 9 };
  const u = validateRenderParams({ ...base, sampler: "unipc" }, d);
  assert.equal(u.sampler, "unipc");
  assert.equal(u.unipcVariant, "bh1");
  assert.equal(validateRenderParams({ ...base, sampler: "unipc", unipcVariant: "BH2" }, d).unipcVariant, "bh2");
  refused(() => validateRenderParams({ ...base, sampler: "ddim" }, d), /sampler must be euler .* or unipc/);
  refused(() => validateRenderParams({ ...base, unipcVariant: "bh2" }, d), /UniPC variant needs --sampler unipc/);
  refused(
    () => validateRenderParams({ ...base, sampler: "unipc", unipcVariant: "bh3" }, d),
    /UniPC variant must be bh1 or bh2, got "bh3"/,
  );
  refused(() => validateRenderParams({ ...base, cfgRescale: 0.5 }, d), /cfg rescale needs --sampler unipc/);
  refused(
    () => validateRenderParams({ ...base, sampler: "unipc", cfgRescale: 1.5 }, d),
    /cfg rescale must be between 0 and 1/,
  );
  // 5 s at 30 fps: diffusers ceil(150 / 33) = 5 sections, the demo round(150 / 36) = 4.
  assert.equal(
    planSections({ samplingType: "inverted_anti_drifting", numFrames: 150, latentWindowSize: 9, hasEndImage: false })
      .sections.length,
    5,
  );
  assert.equal(
    planSections({
      samplingType: "inverted_anti_drifting",
      numFrames: 150,
      latentWindowSize: 9,
      hasEndImage: false,
      sectionCount: "demo",
    }).sections.length,
    4,
  );
  // Python's round: half to even (90 / 36 = 2.5 -> 2); never fewer than one section.
  assert.equal(
    planSections({
      samplingType: "vanilla",
      numFrames: 90,
      latentWindowSize: 9,
      hasEndImage: false,
      sectionCount: "demo",
    }).sections.length,
    2,
  );
  assert.equal(
    planSections({
      samplingType: "vanilla",
      numFrames: 10,
      latentWindowSize: 9,
      hasEndImage: false,
      sectionCount: "demo",
    }).sections.length,
    1,
  );
});
