/**
 * Keyframes (FramePack-eichi's section keyframes, by time): which section a time belongs to,
 * which keyframe each plan section takes and in which order their latents are drawn, the rules
 * that refuse bad times, the planner's generator positions and inputs, the recipe's record of
 * them, and `--keyframe TIME:PATH`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import { planSections } from "../../shared/framepack/plan.js";
import { keyframeSchedule, keyframeSections, parseKeyframeTimes } from "../../shared/job/keyframes.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { drawsForRandn } from "../../shared/sampler/torch-rng.js";
import { planJob } from "../../coordinator/planner/job-plan.js";
import { checkRecipeImages, makeRecipe, parseRecipe, recipeText, sha256Hex } from "../../shared/job/recipe.js";
import { keyframesFrom } from "../../coordinator/cli/job-request.js";

const invalid = (pattern: RegExp) => (err: unknown) =>
  err instanceof FarmError && err.status === "INVALID_ARGUMENT" && pattern.test(err.message);

// keyframes_unipc_inverted's plan: 60 frames, window 3, the demo's count: 5 sections of 0.4 s.
const demoPlan = planSections({
  samplingType: "inverted_anti_drifting",
  numFrames: 60,
  latentWindowSize: 3,
  hasEndImage: false,
  sectionCount: "demo",
});

test("a keyframe belongs to the section whose span of video time holds it", () => {
  const sectionOf = (t: number, fps = 30): number => keyframeSections(demoPlan, [t], fps)[0]!;
  assert.deepEqual(
    [0, 0.39, 0.4, 1.3, 1.99].map((t) => sectionOf(t)),
    [0, 0, 1, 3, 4],
  );
  // 2.4 s at 30 fps is 1.9999999999999998 sections of 1.2 s in floats: still the section it starts.
  const plan = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 150,
    latentWindowSize: 9,
    hasEndImage: false,
  });
  assert.deepEqual(keyframeSections(plan, [2.4], 30), [2]);
  // fps scales the spans: at 24 fps a window-3 section is 0.5 s.
  assert.deepEqual(
    [0.45, 0.55].map((t) => sectionOf(t, 24)),
    [0, 1],
  );
});

test("each section takes the latest keyframe at or before it (eichi's smallest section number >= its own); draws in plan order", () => {
  // Keyframes at 0.5 s (video-time section 1) and 1.3 s (section 3); plan section k is video-time 4 - k.
  const s = keyframeSchedule(demoPlan, [0.5, 1.3], 30);
  assert.deepEqual(s.bySection, [1, 1, 0, 0, null]);
  assert.deepEqual(s.drawOrder, [1, 0]);
  assert.deepEqual(keyframeSchedule(demoPlan, [], 30), { bySection: [null, null, null, null, null], drawOrder: [] });
  // A keyframe in the video's first section (generated last) is at or before every section.
  assert.deepEqual(keyframeSchedule(demoPlan, [0.1], 30).bySection, [0, 0, 0, 0, 0]);
  // One in its last section (generated first) is taken there only.
  assert.deepEqual(keyframeSchedule(demoPlan, [1.9], 30).bySection, [0, null, null, null, null]);
  // Three keyframes: sampled latest first.
  assert.deepEqual(keyframeSchedule(demoPlan, [0, 0.9, 1.7], 30), {
    bySection: [2, 1, 1, 0, 0],
    drawOrder: [2, 1, 0],
  });
});

test("bad keyframe times are INVALID_ARGUMENT naming the keyframe", () => {
  const inverted = "inverted_anti_drifting" as const;
  assert.deepEqual(parseKeyframeTimes(undefined, 2, inverted), []);
  assert.deepEqual(parseKeyframeTimes([], 2, "vanilla"), []);
  assert.throws(() => parseKeyframeTimes([0.5], 2, "vanilla"), invalid(/keyframes need inverted/));
  assert.throws(
    () => parseKeyframeTimes([2], 2, inverted),
    invalid(/keyframe 1: its time 2s is at or after the video's end \(2s\)/),
  );
  assert.throws(() => parseKeyframeTimes([-0.1], 2, inverted), invalid(/before the video's start/));
  assert.throws(
    () => parseKeyframeTimes([Infinity], 2, inverted),
    invalid(/keyframe 1: its time must be a finite number/),
  );
  assert.throws(
    () => parseKeyframeTimes([1, 1], 2, inverted),
    invalid(/keyframe 2 \(at 1s\) is not after keyframe 1 \(at 1s\)/),
  );
  assert.throws(() => parseKeyframeTimes("1", 2, inverted), invalid(/must be a list/));
  assert.throws(() => parseKeyframeTimes(new Array(257).fill(0), 2, inverted), invalid(/at most 256 keyframes/));
  // The demo's section count covers 1.2 s of 50 frames (1.67 s).
  const short = planSections({
    samplingType: inverted,
    numFrames: 50,
    latentWindowSize: 9,
    hasEndImage: false,
    sectionCount: "demo",
  });
  assert.throws(() => keyframeSections(short, [1.5], 30), invalid(/past the video's last section, which ends at 1.2s/));
  assert.throws(() => keyframeSections(demoPlan, [0.5, 0.7], 30), invalid(/same section \(0.4s to 0.8s\)/));
  // validateRenderParams reads them against the asked length.
  const base = { prompt: "p", numFrames: 60, resolution: 64 };
  const defaults = { samplingType: inverted, latentWindowSize: 3 };
  assert.deepEqual(validateRenderParams({ ...base, keyframeTimes: [0.5, 1.3] }, defaults).keyframeTimes, [0.5, 1.3]);
  assert.deepEqual(validateRenderParams(base, defaults).keyframeTimes, []);
  assert.throws(() => validateRenderParams({ ...base, keyframeTimes: [2.5] }, defaults), invalid(/video's end \(2s\)/));
});

test("the planner gives vae_encode every keyframe and moves the noise's generator past their samples", () => {
  const sections = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 36,
    latentWindowSize: 3,
    hasEndImage: true,
  });
  const latent = { channels: 4, height: 8, width: 8 };
  const plan = (rng: "diffusers" | "demo") =>
    planJob({ jobId: "j", seed: 5n, sections, hasEndImage: true, keyframes: 2, trueCfg: false, latent, rng });
  const tasks = plan("diffusers");
  const vae = tasks.find((t) => t.kind === "vae_encode")!;
  assert.deepEqual(Object.keys(vae.inputs).sort(), ["first", "keyframe0", "keyframe1", "last"]);
  assert.equal(vae.inputs["keyframe1"], "jobs/j/inputs/keyframe-1");
  assert.deepEqual(Object.keys(tasks.find((t) => t.kind === "encode_image")!.inputs).sort(), ["first", "last"]);
  const posterior = drawsForRandn(4 * 8 * 8);
  const noise = drawsForRandn(4 * 3 * 8 * 8);
  tasks
    .filter((t) => t.kind === "denoise")
    .forEach((t, k) => assert.deepEqual(t.rng, { seed: "5", offset: posterior * 4 + k * noise }));
  // The demo's noise has a generator of its own: the image samples do not move it.
  assert.equal(plan("demo").find((t) => t.kind === "denoise")!.rng!.offset, 0);
});

test("a recipe records the keyframes' times and digests, and refuses other keyframes", () => {
  const params = validateRenderParams(
    { prompt: "p", numFrames: 60, resolution: 64, keyframeTimes: [0.5, 1.3] },
    { samplingType: "inverted_anti_drifting", latentWindowSize: 3 },
  );
  const a = new Uint8Array([1]);
  const b = new Uint8Array([2]);
  const keyframes = [
    { time: 0.5, sha256: sha256Hex(a) },
    { time: 1.3, sha256: sha256Hex(b) },
  ];
  const start = new Uint8Array([9]);
  const recipe = makeRecipe({
    params,
    size: { height: 64, width: 64 },
    format: "mp4",
    images: { start, end: null, keyframes },
    bundle: { name: "tiny", digest: `sha256:${"a".repeat(64)}` },
    framefarmVersion: "0.1.0",
  });
  assert.deepEqual(recipe.images.keyframes, [
    { time_seconds: 0.5, sha256: sha256Hex(a) },
    { time_seconds: 1.3, sha256: sha256Hex(b) },
  ]);
  assert.deepEqual(parseRecipe(recipeText(recipe)), recipe);
  checkRecipeImages(recipe, start, null, keyframes);
  assert.throws(
    () => checkRecipeImages(recipe, start, null, []),
    invalid(/rendered with 2 keyframes \(at 0.5s, 1.3s\), 0 given/),
  );
  assert.throws(
    () => checkRecipeImages(recipe, start, null, [keyframes[0]!, { ...keyframes[1]!, time: 1.4 }]),
    invalid(/keyframe 2 is at 1.4s; the recipe's is at 1.3s/),
  );
  assert.throws(
    () =>
      checkRecipeImages(
        recipe,
        start,
        null,
        [keyframes[1]!, keyframes[1]!].map((k, i) => ({ ...k, time: i ? 1.3 : 0.5 })),
      ),
    invalid(/keyframe 1's image is not the recipe's: its SHA-256 is/),
  );
  // Without keyframes the recipe has no such field (older recipes' bytes stay as they were) and refuses any.
  const plain = makeRecipe({
    params: { ...params, keyframeTimes: [] },
    size: { height: 64, width: 64 },
    format: "mp4",
    images: { start, end: null },
    bundle: { name: "tiny", digest: `sha256:${"a".repeat(64)}` },
    framefarmVersion: "0.1.0",
  });
  assert.equal("keyframes" in plain.images, false);
  assert.throws(
    () => checkRecipeImages(plain, start, null, keyframes),
    invalid(/rendered without keyframes: give none/),
  );
  const text = JSON.parse(recipeText(recipe)) as { images: { keyframes: object[] } };
  text.images.keyframes[0] = { time_seconds: 0.5, sha256: sha256Hex(a), weight: 1 };
  assert.throws(() => parseRecipe(JSON.stringify(text)), invalid(/unknown field images.keyframes\[0\].weight/));
});

test("--keyframe TIME:PATH, repeated, in the order given", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-keyframes-"));
  try {
    const file = path.join(dir, "a:b.png");
    await writeFile(file, new Uint8Array([7]));
    const got = await keyframesFrom([`1.5:${file}`, `0.25s:${file}`]);
    assert.deepEqual(
      got.map((k) => k.timeSeconds),
      [1.5, 0.25],
    );
    assert.deepEqual(got[0]!.image, { source: { $case: "data", value: Buffer.from([7]) } });
    assert.deepEqual(await keyframesFrom(undefined), []);
    for (const bad of ["key.png", "x:key.png", ":key.png", "1.5:"])
      await assert.rejects(keyframesFrom([bad]), invalid(/--keyframe must be TIME:PATH/));
    await assert.rejects(
      keyframesFrom([`1:${path.join(dir, "missing.png")}`]),
      /keyframe 1 .*missing.png cannot be read/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
