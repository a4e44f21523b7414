/** The admission check's memory estimate (shared/job/memory-estimate.ts) and its refusal. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { estimateJobMemory, admitMemory } from "../../shared/job/memory-estimate.js";
import { validateManifest } from "../../shared/bundle/manifest.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { FarmError } from "../../shared/errors.js";
import { tinyBundleDir } from "../support/paths.js";

const manifest = validateManifest(
  JSON.parse(readFileSync(path.join(tinyBundleDir(), "framefarm-bundle.json"), "utf8")),
);

function estimate(
  height: number,
  width: number,
  numFrames: number,
  attentionBlockBytes: number | null = 16 * 2 ** 20,
  vaeTiling = false,
) {
  const plan = sectionPlanFor(
    { samplingType: "inverted_anti_drifting", numFrames, latentWindowSize: 9, hasEndImage: false },
    manifest,
  );
  return estimateJobMemory({
    manifest,
    plan,
    height,
    width,
    weightBytes: 4e6,
    attentionBlockBytes,
    decoderChannels: 8,
    vaeTiling,
  });
}

test("denoise and decode memory do not grow with the video's length", () => {
  const short = estimate(544, 704, 30);
  for (const frames of [60, 300, 1800]) {
    const long = estimate(544, 704, frames);
    assert.equal(long.denoise, short.denoise);
    assert.equal(long.decode, short.decode);
  }
});

test("memory grows with resolution, and the exported VAE attention costs [N, N] scores", () => {
  const small = estimate(256, 256, 60);
  const large = estimate(544, 704, 60);
  assert.ok(large.denoise > small.denoise && large.decode > small.decode && large.peak > small.peak);
  // 5 latent frames of 68x88 = 29920 tokens: four 3.58 GB copies of the scores as exported.
  const exported = estimate(544, 704, 60, null);
  assert.ok(
    exported.decode > 4 * 29920 ** 2 * 4 && exported.decode - large.decode > 13e9,
    `${exported.decode} vs ${large.decode}`,
  );
});

test("a job that cannot fit is refused with RESOURCE_EXHAUSTED naming needed and available memory", () => {
  const e = estimate(544, 704, 60);
  admitMemory(e, { bytes: e.peak + 1, what: "this node" }, { height: 544, width: 704, frames: 60 });
  assert.throws(
    () => admitMemory(e, { bytes: 2 ** 30, what: "this node" }, { height: 544, width: 704, frames: 60 }),
    (err: unknown) =>
      err instanceof FarmError &&
      err.status === "RESOURCE_EXHAUSTED" &&
      /needs about \d+\.\d GiB/.test(err.message) &&
      /has 1\.0 GiB available/.test(err.message) &&
      /704x544/.test(err.message),
  );
});

test("a job with VAE tiling needs a tile's decode memory above 256 px, the same at or below it", () => {
  // At or below one 256-pixel tile nothing is tiled: the same estimate.
  assert.deepEqual(estimate(256, 256, 60, null, true), estimate(256, 256, 60, null));
  // 704x544 decodes as 3 x 3 tiles of at most 256x256: activations and the exported attention's
  // [N, N] scores shrink to a tile's (5 x 32 x 32 tokens instead of 5 x 68 x 88).
  for (const block of [null, 16 * 2 ** 20]) {
    const untiled = estimate(544, 704, 60, block);
    const tiled = estimate(544, 704, 60, block, true);
    assert.ok(tiled.decode < untiled.decode / 2, `${tiled.decode} vs ${untiled.decode}`);
    assert.ok(tiled.peak < untiled.peak);
    assert.equal(tiled.denoise, untiled.denoise);
    assert.equal(tiled.mux, untiled.mux);
  }
  // The decoded tiles and their joined frames are counted: more than a single 256x256 call needs.
  const oneTile = estimate(256, 256, 60, null);
  assert.ok(estimate(544, 704, 60, null, true).decode > oneTile.decode);
});
