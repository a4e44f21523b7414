import { test } from "node:test";
import assert from "node:assert/strict";
import { validateRenderParams, usesTrueCfg, LIMITS, type RenderParamsInput } from "../../shared/job/render-params.js";
import { FarmError } from "../../shared/errors.js";

const defaults = { samplingType: "inverted_anti_drifting" as const, latentWindowSize: 9 };
const base: RenderParamsInput = { prompt: "a cat", seconds: 2 };

function rejects(input: RenderParamsInput, pattern: RegExp): void {
  assert.throws(
    () => validateRenderParams({ ...base, ...input }, defaults),
    (err: unknown) => err instanceof FarmError && err.status === "INVALID_ARGUMENT" && pattern.test(err.message),
    `expected INVALID_ARGUMENT matching ${pattern}`,
  );
}

test("defaults follow FramePack's demo", () => {
  const p = validateRenderParams(base, defaults);
  assert.equal(p.numFrames, 60);
  assert.equal(p.steps, 25);
  assert.equal(p.guidanceScale, 10);
  assert.equal(p.seed, 31337n);
  assert.equal(p.latentWindowSize, 9);
  assert.deepEqual(p.size, { resolution: 640 });
  assert.equal(usesTrueCfg(p), false);
});

test("seeds cover torch's unsigned 64-bit range", () => {
  assert.equal(validateRenderParams({ ...base, seed: "18446744073709551615" }, defaults).seed, (1n << 64n) - 1n);
  rejects({ seed: "18446744073709551616" }, /seed/);
  rejects({ seed: "-1" }, /seed/);
  rejects({ seed: "1.5" }, /seed/);
});

test("bad lengths, steps and sizes are rejected naming the parameter", () => {
  rejects({ seconds: 0 }, /seconds/);
  rejects({ seconds: -3 }, /seconds/);
  rejects({ seconds: Number.NaN }, /seconds/);
  rejects({ seconds: 1e9 }, /seconds/);
  rejects({ seconds: undefined, numFrames: 0 }, /frames/);
  rejects({ seconds: undefined, numFrames: 2.5 }, /frames/);
  rejects({ numFrames: 10 }, /either seconds or frames/);
  rejects({ steps: 0 }, /steps/);
  rejects({ steps: 10_000 }, /steps/);
  rejects({ guidanceScale: Infinity }, /guidance/);
  rejects({ latentWindowSize: 0 }, /window/);
  rejects({ resolution: 100 }, /multiple of 16/);
  rejects({ resolution: 16 }, /resolution/);
  rejects({ height: 64 }, /both height and width/);
  rejects({ height: 64, width: 70 }, /width must be a multiple of 16/);
  rejects({ fps: 0 }, /fps/);
  rejects({ crf: 52 }, /crf/);
});

test("prompts must be sane text", () => {
  rejects({ prompt: "" }, /prompt must not be empty/);
  rejects({ prompt: 42 }, /prompt must be text/);
  rejects({ prompt: "bad \ud800 surrogate" }, /not valid Unicode/);
  rejects({ prompt: "nul\0byte" }, /NUL/);
  rejects({ prompt: "x".repeat(LIMITS.maxPromptBytes + 1) }, /limit is 16384 bytes/);
});

test("an end image needs inverted sampling", () => {
  rejects({ samplingType: "vanilla", hasEndImage: true }, /end image/);
  assert.equal(validateRenderParams({ ...base, hasEndImage: true }, defaults).hasEndImage, true);
  rejects({ samplingType: "diagonal" }, /mode/);
});

test("true CFG needs both a scale above 1 and a negative prompt", () => {
  assert.equal(usesTrueCfg(validateRenderParams({ ...base, trueCfgScale: 2.5 }, defaults)), false);
  assert.equal(
    usesTrueCfg(validateRenderParams({ ...base, trueCfgScale: 2.5, negativePrompt: "blurry" }, defaults)),
    true,
  );
  assert.equal(
    usesTrueCfg(validateRenderParams({ ...base, trueCfgScale: 1, negativePrompt: "blurry" }, defaults)),
    false,
  );
});

test("extending a video: context frames 2..10 (5), only with a video; a video too short is refused", () => {
  const video = { frames: 50, width: 96, height: 64, fps: 24 };
  const p = validateRenderParams({ ...base, inputVideo: video }, defaults);
  assert.deepEqual(p.video, { contextFrames: 5, frames: 50, width: 96, height: 64 });
  assert.equal(p.fps, 24);
  assert.equal(validateRenderParams({ ...base, inputVideo: video, fps: 30 }, defaults).fps, 30);
  assert.equal(validateRenderParams({ ...base, inputVideo: { ...video, fps: null } }, defaults).fps, 30);
  assert.equal(validateRenderParams(base, defaults).video, null);
  rejects({ contextFrames: 5 }, /context frames need a video to extend/);
  rejects({ inputVideo: video, contextFrames: 1 }, /context frames must be an integer from 2 to 10, got 1/);
  rejects({ inputVideo: video, contextFrames: 11 }, /context frames must be an integer from 2 to 10, got 11/);
  // 50 frames are 13 latents: enough for window 13, not 14.
  validateRenderParams({ ...base, inputVideo: video, latentWindowSize: 13 }, defaults);
  rejects(
    { inputVideo: video, latentWindowSize: 14 },
    /the video has 50 frames, too short for the context: 5 context frames with window 14 need 14 latent frames, its last 53 frames/,
  );
  rejects({ inputVideo: { ...video, fps: 240 } }, /the video's frame rate 240 is not between 1 and 120: give fps/);
});

test("VAE tiling: off by default (diffusers' pipeline), a boolean when given, anything else refused by name", () => {
  assert.equal(validateRenderParams(base, defaults).vaeTiling, false);
  assert.equal(validateRenderParams({ ...base, vaeTiling: null }, defaults).vaeTiling, false);
  assert.equal(validateRenderParams({ ...base, vaeTiling: true }, defaults).vaeTiling, true);
  assert.equal(validateRenderParams({ ...base, vaeTiling: false }, defaults).vaeTiling, false);
  // "false" is truthy: read loosely it would tile.
  for (const v of ["false", "true", 1, 0, "yes", {}]) rejects({ vaeTiling: v }, /vae tiling must be true or false/);
});
