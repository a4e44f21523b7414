/**
 * Spatial VAE tiling as a job option, as a user gets it from `framefarm render` (real processes,
 * the tiny bundle at 352x272: 44 x 34 latents, so each decode call is cut into 2 x 2 tiles of at
 * most 32 latents). `--vae-tiling` changes the frames; they are exactly the in-process render's,
 * whose every decode is the tiled decode that test/parity/vae-tiling.test.ts checks against
 * diffusers' vae.enable_tiling(); the recipe records it and re-renders the same bytes;
 * FRAMEFARM_VAE_TILING=1 is only render's default for the flag, recorded the same way; and a node
 * or a cluster with it set refuses to start.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { parseRecipe } from "../../shared/job/recipe.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import type { F32, Tensor } from "../../shared/tensor/tensor.js";
import { openNodeModels } from "../../gpu-node/main.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { decodeVideo } from "../../gpu-node/stages/decode-latents.js";
import { pixelsFor, readImageFile } from "../../coordinator/cli/embedded/inputs.js";
import { cliPath, repoRoot, testOutputDir, tinyBundleDir } from "../support/paths.js";

const run = promisify(execFile);
const demoImage = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
const dir = path.join(testOutputDir(), "e2e-vae-tiling");
const [W, H] = [352, 272];
const file = (name: string): string => path.join(dir, name);
// Lossless, so that decoded frames are the rendered ones exactly.
const ARGS = [
  "render",
  "--image",
  demoImage,
  "--prompt",
  "a lighthouse",
  "--frames",
  "9",
  "--window",
  "3",
  "--steps",
  "1",
  "--height",
  String(H),
  "--width",
  String(W),
  "--lossless",
];

async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<void> {
  const base = { ...process.env };
  delete base["FRAMEFARM_VAE_TILING"];
  await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20, env: { ...base, ...env } });
}

const bytes = (t: Tensor): Buffer => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
const frames = (name: string) => readMp4Frames(file(name), W, H);

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await Promise.all([
    cli([...ARGS, "--vae-tiling", "-o", file("tiled.mp4")]),
    cli([...ARGS, "-o", file("untiled.mp4")]),
  ]);
});

test("--vae-tiling above 256 px tiles: other frames than the untiled render, and the recipe says so", async () => {
  const [tiled, untiled] = await Promise.all([frames("tiled.mp4"), frames("untiled.mp4")]);
  assert.deepEqual(tiled.shape, untiled.shape);
  assert.ok(!bytes(tiled).equals(bytes(untiled)), "tiled frames differ from untiled ones");
  const recipe = parseRecipe(await readFile(file("tiled.recipe.json"), "utf8"));
  assert.equal(recipe.vae_tiling, true);
  assert.equal(parseRecipe(await readFile(file("untiled.recipe.json"), "utf8")).vae_tiling, false);
  assert.deepEqual({ ...recipe, vae_tiling: false }, parseRecipe(await readFile(file("untiled.recipe.json"), "utf8")));
});

test("the tiled render's frames are the in-process render's, every decode the tiled decode parity checks", async () => {
  const models = await openNodeModels(tinyBundleDir(), "cpu");
  try {
    const m = models.runtime.bundle.manifest;
    const params = validateRenderParams(
      {
        prompt: "a lighthouse",
        numFrames: 9,
        latentWindowSize: 3,
        steps: 1,
        height: H,
        width: W,
        vaeTiling: true,
      },
      { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
    );
    const pixels = await pixelsFor(await readImageFile(demoImage, "image"), { height: H, width: W });
    const probed = new Map<string, Tensor>();
    const expected = await renderJob(
      models,
      { params, firstPixels: pixels, lastPixels: null },
      { probe: (k, t) => probed.set(k, t) },
    );
    assert.ok(bytes(await frames("tiled.mp4")).equals(bytes(expected)), "render --vae-tiling = in-process render");
    const decodes = [...probed.keys()].filter((k) => /^decode\d+\.in$/.test(k));
    assert.ok(decodes.length > 0);
    for (const k of decodes) {
      const input = probed.get(k) as F32;
      const out = probed.get(k.replace(".in", ".out"))!;
      assert.ok(bytes(out).equals(bytes(await decodeVideo(models.runtime, input, { spatialTiling: true }))), k);
      assert.ok(!bytes(out).equals(bytes(await decodeVideo(models.runtime, input, { spatialTiling: false }))), k);
    }
  } finally {
    await models.close();
  }
});

test("render --recipe of a tiled render writes the same bytes; FRAMEFARM_VAE_TILING=1 is only the flag's default", async () => {
  await Promise.all([
    // The environment asks for nothing here: the recipe sets tiling.
    cli(["render", "--recipe", file("tiled.recipe.json"), "--image", demoImage, "-o", file("again.mp4")]),
    cli([...ARGS, "-o", file("env.mp4")], { FRAMEFARM_VAE_TILING: "1" }),
  ]);
  const tiled = await readFile(file("tiled.mp4"));
  assert.ok((await readFile(file("again.mp4"))).equals(tiled), "the recipe re-renders identical MP4 bytes");
  assert.equal(await readFile(file("again.recipe.json"), "utf8"), await readFile(file("tiled.recipe.json"), "utf8"));
  assert.ok((await readFile(file("env.mp4"))).equals(tiled), "FRAMEFARM_VAE_TILING=1 renders as --vae-tiling does");
  assert.equal(parseRecipe(await readFile(file("env.recipe.json"), "utf8")).vae_tiling, true);
});

test("a node or a cluster with FRAMEFARM_VAE_TILING set refuses to start, before connecting to anything", async () => {
  for (const args of [
    ["node", "--nats", "nats://127.0.0.1:1", "--s3", "127.0.0.1:1"],
    ["cluster", "--http-port", "0"],
  ]) {
    const err = await cli(args, { FRAMEFARM_VAE_TILING: "1" }).then(
      () => assert.fail(`${args[0]} started`),
      (e: unknown) => e as { code?: number; stderr?: string },
    );
    assert.notEqual(err.code, 0);
    assert.match(err.stderr ?? "", /error \[FAILED_PRECONDITION\]: FRAMEFARM_VAE_TILING="1" is set/, args[0]);
    assert.match(err.stderr ?? "", /no longer a node setting: it is a job option/, args[0]);
  }
});
