/**
 * Extending a video with VAE tiling, the two job options together (real processes, the tiny bundle
 * at 352x272: 44 x 34 latents, so every decode call is cut into 2 x 2 spatial tiles). The video's
 * encode is untiled either way (tiling is the decode's), so the input's frames before the join are
 * the same; every decode, the join's (the input's last window decoded again with the section next to
 * it) included, is tiled exactly when the job says so, so the generated part differs; the recipe
 * records both context_frames and vae_tiling and renders the same bytes again from the same video.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { readMp4Frames, writeMp4 } from "../../shared/video/mp4.js";
import { readVideoComment } from "../../shared/video/probe.js";
import { inspectVideo } from "../../shared/video/video-input.js";
import { parseRecipe, sha256Hex } from "../../shared/job/recipe.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { openNodeModels } from "../../gpu-node/main.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { decodeVideo } from "../../gpu-node/stages/decode-latents.js";
import { cliPath, testOutputDir, tinyBundleDir } from "../support/paths.js";

const run = promisify(execFile);
const dir = path.join(testOutputDir(), "e2e-extend-video-vae-tiling");
const file = (name: string): string => path.join(dir, name);
// 21 frames (6 latents) at the render size, so the input's frames come back as they are.
const [T, H, W] = [21, 272, 352];
// Window 3: the join cross-fades the input's last (3 - 1) * 4 + 1 frames.
const JOIN = 9;
const ARGS = [
  "render",
  "--video",
  file("input.mp4"),
  "--mode",
  "vanilla",
  "--context-frames",
  "3",
  "--window",
  "3",
  "--frames",
  "9",
  "--steps",
  "1",
  "--seed",
  "7",
  "--prompt",
  "the lighthouse keeps turning",
  "--height",
  String(H),
  "--width",
  String(W),
  "--lossless",
];
let input: Tensor<"uint8">;

async function cli(args: string[]): Promise<void> {
  const env = { ...process.env };
  delete env["FRAMEFARM_VAE_TILING"];
  await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20, env });
}

const bytes = (t: { data: ArrayBufferView }): Buffer =>
  Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
const frames = (name: string) => readMp4Frames(file(name), W, H);
const frameSize = H * W * 3;
const framesOf = (t: Tensor<"uint8">, first: number, end: number): Buffer =>
  Buffer.from(t.data.subarray(first * frameSize, end * frameSize));

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const data = new Uint8Array(T * frameSize);
  for (let t = 0; t < T; t++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++)
        for (let c = 0; c < 3; c++)
          data[((t * H + y) * W + x) * 3 + c] = (x + y * 2 + t * 6 + c * 70 + ((x * y) % 5)) % 256;
  input = new Tensor("uint8", [T, H, W, 3], data);
  await writeMp4(input, file("input.mp4"), { fps: 25, crf: 0, lossless: true });
  await Promise.all([
    cli([...ARGS, "--vae-tiling", "-o", file("tiled.mp4")]),
    cli([...ARGS, "-o", file("untiled.mp4")]),
  ]);
});

test("a tiled video extension keeps the input's frames, tiles the generated part, and its recipe has both options", async () => {
  const [tiled, untiled] = await Promise.all([frames("tiled.mp4"), frames("untiled.mp4")]);
  assert.deepEqual(tiled.shape, untiled.shape);
  assert.ok(tiled.shape[0]! > T, "the video is extended");
  assert.ok(framesOf(tiled, 0, T - JOIN).equals(framesOf(input, 0, T - JOIN)), "the input's frames, unchanged");
  assert.ok(framesOf(untiled, 0, T - JOIN).equals(framesOf(input, 0, T - JOIN)));
  assert.ok(
    !framesOf(tiled, T - JOIN, tiled.shape[0]!).equals(framesOf(untiled, T - JOIN, untiled.shape[0]!)),
    "the join and the generated frames are decoded in tiles",
  );
  const recipe = parseRecipe((await readVideoComment(file("tiled.mp4")))!);
  assert.equal(recipe.vae_tiling, true);
  assert.equal(recipe.context_frames, 3);
  assert.equal(recipe.images.start_sha256, null);
  assert.equal(recipe.images.video_sha256, sha256Hex(await readFile(file("input.mp4"))));
  const other = parseRecipe((await readVideoComment(file("untiled.mp4")))!);
  assert.deepEqual({ ...recipe, vae_tiling: false }, other);
});

test("the tiled extension's frames are the in-process render's, every decode (the join's too) tiled", async () => {
  const video = await readFile(file("input.mp4"));
  const models = await openNodeModels(tinyBundleDir(), "cpu");
  try {
    const m = models.runtime.bundle.manifest;
    const params = validateRenderParams(
      {
        prompt: "the lighthouse keeps turning",
        samplingType: "vanilla",
        numFrames: 9,
        latentWindowSize: 3,
        steps: 1,
        seed: "7",
        height: H,
        width: W,
        contextFrames: 3,
        inputVideo: await inspectVideo(video),
        vaeTiling: true,
      },
      { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
    );
    const probed = new Map<string, Tensor>();
    const expected = await renderJob(
      models,
      { params, firstPixels: null, lastPixels: null, video },
      { probe: (k, t) => probed.set(k, t) },
    );
    assert.ok(bytes(await frames("tiled.mp4")).equals(bytes(expected)), "render --video --vae-tiling = in-process");
    const decodes = [...probed.keys()].filter((k) => /^decode\d+\.in$/.test(k));
    assert.ok(decodes.length > 0);
    for (const k of decodes) {
      const latents = probed.get(k) as F32;
      const out = probed.get(k.replace(".in", ".out"))!;
      assert.ok(bytes(out).equals(bytes(await decodeVideo(models.runtime, latents, { spatialTiling: true }))), k);
      assert.ok(!bytes(out).equals(bytes(await decodeVideo(models.runtime, latents, { spatialTiling: false }))), k);
    }
  } finally {
    await models.close();
  }
});

test("render --recipe of a tiled video extension, with the same video, writes the same bytes", async () => {
  await cli(["render", "--recipe", file("tiled.mp4"), "--video", file("input.mp4"), "-o", file("again.mp4")]);
  assert.ok((await readFile(file("again.mp4"))).equals(await readFile(file("tiled.mp4"))));
  assert.equal(parseRecipe((await readVideoComment(file("again.mp4")))!).vae_tiling, true);
});
