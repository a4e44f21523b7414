/**
 * Keyframes through the CLI on a farm (nats-server, s3rver, the coordinator's API and nodes) and
 * in embedded mode: `submit --keyframe` renders with them (other frames than without), the recipe
 * records them, `submit --recipe` on the farm gives the same MP4 bytes and `render --recipe` in
 * embedded mode the same frames when the same keyframes are given again; other keyframes are refused.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { parseRecipe, sha256Hex } from "../../shared/job/recipe.js";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { cliPath, repoRoot, testOutputDir } from "../support/paths.js";

const run = promisify(execFile);
const fixtures = path.join(repoRoot(), "test", "fixtures");
const demoImage = path.join(fixtures, "images", "demo.png");
const endImage = path.join(fixtures, "reference-cases", "keyframes_inverted_endframe_cfg_last.png");
// 64x64 images: resized to cover the job's 64x48 as the start and end images are.
const key0 = path.join(fixtures, "reference-cases", "keyframes_unipc_inverted_keyframe0.png");
const key1 = path.join(fixtures, "reference-cases", "keyframes_unipc_inverted_keyframe1.png");
const dir = path.join(testOutputDir(), "integration-keyframes-farm");
const file = (name: string): string => path.join(dir, name);
const [W, H] = [64, 48];

let farm: TestFarm;

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  farm = await startTestFarm({ nodes: true });
});

after(async () => {
  await farm?.stop();
});

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stderr };
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? "" };
  }
}

// Window 3 at 24 fps: sections of 0.5 s; 48 frames are 5 sections (diffusers' count).
const settings = [
  ...["--prompt", "a lighthouse", "--frames", "48", "--fps", "24", "--window", "3", "--steps", "2"],
  ...["--resolution", "64"],
];
const images = ["--image", demoImage, "--end-image", endImage];
const keyframes = ["--keyframe", `0.6:${key0}`, "--keyframe", `1.4s:${key1}`];
const submitWait = (out: string, ...args: string[]) =>
  cli(["submit", "--server", farm.address, ...args, "--wait", "-o", file(out)]);

test("keyframes render on a farm, and their recipe renders the same video on the farm and embedded", async () => {
  const first = await submitWait("farm.mp4", ...images, ...keyframes, ...settings, "--seed", "3");
  assert.equal(first.code, 0, first.stderr);
  const recipe = parseRecipe(await readFile(file("farm.recipe.json"), "utf8"));
  assert.deepEqual(recipe.images.keyframes, [
    { time_seconds: 0.6, sha256: sha256Hex(await readFile(key0)) },
    { time_seconds: 1.4, sha256: sha256Hex(await readFile(key1)) },
  ]);

  const plain = await submitWait("plain.mp4", ...images, ...settings, "--seed", "3");
  assert.equal(plain.code, 0, plain.stderr);
  const [withKeys, without] = await Promise.all([
    readMp4Frames(file("farm.mp4"), W, H),
    readMp4Frames(file("plain.mp4"), W, H),
  ]);
  assert.deepEqual(withKeys.shape, without.shape);
  assert.ok(!Buffer.from(withKeys.data).equals(Buffer.from(without.data)), "the keyframes change the video");

  const again = await submitWait("again.mp4", "--recipe", file("farm.mp4"), ...images, ...keyframes);
  assert.equal(again.code, 0, again.stderr);
  assert.ok((await readFile(file("again.mp4"))).equals(await readFile(file("farm.mp4"))), "farm: same MP4 bytes");

  const embedded = await cli([
    "render",
    "--recipe",
    file("farm.recipe.json"),
    ...images,
    ...keyframes,
    "-o",
    file("embedded.mp4"),
  ]);
  assert.equal(embedded.code, 0, embedded.stderr);
  // Its recipe names the embedded bundle ("tiny-bundle"; the test farm's is "tiny"): compare frames.
  assert.ok(
    Buffer.from((await readMp4Frames(file("embedded.mp4"), W, H)).data).equals(Buffer.from(withKeys.data)),
    "embedded re-render of the farm's recipe: identical frames",
  );
});

test("a keyframe recipe is refused with other keyframes, and nothing is stored", async () => {
  const before = await farm.snapshot();
  const cases: [string[], RegExp][] = [
    [[], /rendered with 2 keyframes \(at 0.6s, 1.4s\), 0 given: give the same keyframes again/],
    [["--keyframe", `0.6:${key0}`, "--keyframe", `1.3:${key1}`], /keyframe 2 is at 1.3s; the recipe's is at 1.4s/],
    [["--keyframe", `0.6:${key1}`, "--keyframe", `1.4:${key1}`], /keyframe 1's image is not the recipe's/],
  ];
  for (const [given, message] of cases) {
    const r = await submitWait("refused.mp4", "--recipe", file("farm.recipe.json"), ...images, ...given);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /INVALID_ARGUMENT/);
    assert.match(r.stderr, message);
  }
  const r = await cli(["render", ...images, "--keyframe", `2.5:${key0}`, ...settings, "-o", file("late.mp4")]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /INVALID_ARGUMENT.*keyframe 1: its time 2.5s is at or after the video's end \(2s\)/);
  assert.deepEqual(await farm.snapshot(), before);
});
