/**
 * Extending a video as a user does it with `framefarm render --video` (real processes, the tiny
 * bundle): the output is the input's frames, resized to the bucket, exactly (lossless), then the
 * generated part, at the input's frame rate; its recipe names the video and renders the same bytes
 * again from it; inverted with an end image; wrong inputs refused with their status.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { Tensor } from "../../shared/tensor/tensor.js";
import { readMp4Frames, writeMp4 } from "../../shared/video/mp4.js";
import { readVideoComment } from "../../shared/video/probe.js";
import { resizeAndCenterCrop } from "../../shared/image/decode.js";
import { parseRecipe, sha256Hex } from "../../shared/job/recipe.js";
import { cliPath, repoRoot, testOutputDir } from "../support/paths.js";

const run = promisify(execFile);
const dir = path.join(testOutputDir(), "e2e-extend-video");
const file = (name: string): string => path.join(dir, name);
// 40 frames of 96x72 at 25 fps: 10 latents, the 64 bucket of 4:3 is 64x48.
const [T, H0, W0, H, W] = [40, 72, 96, 48, 64];
let input: Tensor<"uint8">;

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stderr };
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? "" };
  }
}

const common = ["--prompt", "the lighthouse keeps turning", "--steps", "2", "--resolution", "64", "--lossless"];

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const data = new Uint8Array(T * H0 * W0 * 3);
  for (let t = 0; t < T; t++)
    for (let y = 0; y < H0; y++)
      for (let x = 0; x < W0; x++)
        for (let c = 0; c < 3; c++)
          data[((t * H0 + y) * W0 + x) * 3 + c] = (x * 3 + y * 2 + t * 5 + c * 60 + ((x * y) % 7)) % 256;
  input = new Tensor("uint8", [T, H0, W0, 3], data);
  await writeMp4(input, file("input.mp4"), { fps: 25, crf: 0, lossless: true });
  const r = await cli([
    "render",
    "--video",
    file("input.mp4"),
    "--mode",
    "vanilla",
    "--context-frames",
    "3",
    "--frames",
    "40",
    "--seed",
    "5",
    ...common,
    "-o",
    file("extended.mp4"),
  ]);
  assert.equal(r.code, 0, r.stderr);
});

test("the output is the input's frames at the bucket size, exactly, then the new part at the input's fps", async () => {
  const out = await readMp4Frames(file("extended.mp4"), W, H);
  // Two sections of window 9 (diffusers' count for 40 frames): 4 * 9 new frames each.
  assert.equal(out.shape[0], T + 2 * 36);
  const size = H * W * 3;
  const join = 33;
  for (let t = 0; t < T - join; t++) {
    const frame = input.data.subarray(t * H0 * W0 * 3, (t + 1) * H0 * W0 * 3);
    const want = resizeAndCenterCrop({ width: W0, height: H0, rgb: frame }, H, W).rgb;
    assert.ok(Buffer.from(out.data.subarray(t * size, (t + 1) * size)).equals(Buffer.from(want)), `frame ${t}`);
  }
  const recipe = parseRecipe((await readVideoComment(file("extended.mp4")))!);
  assert.equal(recipe.fps, 25);
  assert.equal(recipe.context_frames, 3);
  assert.equal(recipe.images.start_sha256, null);
  assert.equal(recipe.images.video_sha256, sha256Hex(await readFile(file("input.mp4"))));
  assert.deepEqual([recipe.width, recipe.height, recipe.mode], [W, H, "vanilla"]);
});

test("render --recipe with the same video gives the same MP4 bytes; another input is refused", async () => {
  const r = await cli([
    "render",
    "--recipe",
    file("extended.mp4"),
    "--video",
    file("input.mp4"),
    "-o",
    file("again.mp4"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok((await readFile(file("again.mp4"))).equals(await readFile(file("extended.mp4"))));
  const demo = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
  const wrong = await cli(["render", "--recipe", file("extended.mp4"), "--image", demo, "-o", file("wrong.mp4")]);
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stderr, /INVALID_ARGUMENT.*the recipe extends a video: give the same video again/);
});

test("inverted toward an end image, and an image with a video, a PNG as a video, a short video", async () => {
  const end = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
  const inverted = await cli([
    "render",
    "--video",
    file("input.mp4"),
    "--end-image",
    end,
    "--mode",
    "inverted",
    "--frames",
    "40",
    ...common,
    "-o",
    file("toward-end.mp4"),
  ]);
  assert.equal(inverted.code, 0, inverted.stderr);
  assert.equal((await readMp4Frames(file("toward-end.mp4"), W, H)).shape[0], T + 2 * 36);

  const both = await cli([
    "render",
    "--video",
    file("input.mp4"),
    "--image",
    end,
    "--frames",
    "9",
    ...common,
    "-o",
    file("x.mp4"),
  ]);
  assert.match(both.stderr, /INVALID_ARGUMENT.*give a start image or a video to extend, not both/);
  const png = await cli(["render", "--video", end, "--frames", "9", ...common, "-o", file("x.mp4")]);
  assert.match(png.stderr, /INVALID_ARGUMENT.*video is a still image/);
  const short = await cli([
    "render",
    "--video",
    file("input.mp4"),
    "--window",
    "11",
    "--frames",
    "9",
    ...common,
    "-o",
    file("x.mp4"),
  ]);
  assert.match(short.stderr, /INVALID_ARGUMENT.*the video has 40 frames, too short for the context/);
});
