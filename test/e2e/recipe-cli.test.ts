/**
 * Reproducible outputs as a user gets them from `framefarm render` (real processes, the tiny
 * bundle at 64x48): the video carries its recipe in its comment tag (read back with ffprobe) and
 * the same JSON lies beside it; `render --recipe` (from the video or the JSON) renders the same
 * frames again, as MP4 and as lossless WebM; --save-frames writes the exact frames as PNGs; a
 * recipe with other images, another bundle or unknown fields is refused with the right status.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import sharp from "sharp";
import ffprobeInstaller from "@ffprobe-installer/ffprobe";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { parseRecipe } from "../../shared/job/recipe.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { bundleDigest } from "../../gpu-node/runtime/bundle-digest.js";
import { cliPath, repoRoot, testOutputDir, tinyBundleDir } from "../support/paths.js";

const run = promisify(execFile);
const demoImage = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
const dir = path.join(testOutputDir(), "e2e-recipe");
const [W, H] = [64, 48]; // demo.png is 4:3: the 64 bucket nearest to it

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stderr };
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? "" };
  }
}

async function probe(file: string): Promise<{ codec: string; pixFmt: string; tags: Record<string, string> }> {
  const { stdout } = await run(
    ffprobeInstaller.path,
    [
      "-v",
      "error",
      "-select_streams",
      "v:0",
      "-show_entries",
      "stream=codec_name,pix_fmt:format_tags",
      "-of",
      "json",
      file,
    ],
    { maxBuffer: 16 << 20 },
  );
  const j = JSON.parse(stdout) as {
    streams: { codec_name: string; pix_fmt: string }[];
    format: { tags: Record<string, string> };
  };
  return { codec: j.streams[0]!.codec_name, pixFmt: j.streams[0]!.pix_fmt, tags: j.format.tags };
}

const file = (name: string): string => path.join(dir, name);

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  // A first render with CFG and a negative prompt, so that every setting travels.
  const r = await cli([
    "render",
    "--image",
    demoImage,
    "--prompt",
    "a lighthouse in a storm",
    "--negative-prompt",
    "blur",
    "--cfg",
    "2",
    "--seed",
    "12345",
    "--frames",
    "20",
    "--resolution",
    "64",
    "--steps",
    "2",
    "--fps",
    "24",
    "--save-frames",
    file("frames"),
    "-o",
    file("first.mp4"),
  ]);
  assert.equal(r.code, 0, r.stderr);
});

test("the video carries its recipe in the comment tag and the same JSON lies beside it", async () => {
  const sidecar = await readFile(file("first.recipe.json"), "utf8");
  const info = await probe(file("first.mp4"));
  assert.equal(info.codec, "h264");
  assert.equal(info.tags["comment"], sidecar, "ffprobe reads the recipe back from the MP4, byte for byte the sidecar");
  const r = parseRecipe(sidecar);
  assert.equal(r.prompt, "a lighthouse in a storm");
  assert.equal(r.negative_prompt, "blur");
  assert.deepEqual(
    [r.seed, r.steps, r.true_cfg_scale, r.num_frames, r.fps, r.width, r.height, r.resolution],
    ["12345", 2, 2, 20, 24, W, H, 64],
  );
  assert.equal(r.bundle.digest, await bundleDigest(await openBundle(tinyBundleDir())));
  assert.equal(r.images.start_sha256?.length, 64);
  assert.deepEqual(r.video, { format: "mp4", crf: 16, lossless: false });
});

test("render --recipe VIDEO renders the same frames again", async () => {
  const r = await cli(["render", "--recipe", file("first.mp4"), "--image", demoImage, "-o", file("again.mp4")]);
  assert.equal(r.code, 0, r.stderr);
  const [a, b] = await Promise.all([readMp4Frames(file("first.mp4"), W, H), readMp4Frames(file("again.mp4"), W, H)]);
  assert.equal(a.shape[0], 37);
  assert.deepEqual(b.shape, a.shape);
  assert.ok(Buffer.from(a.data).equals(Buffer.from(b.data)), "decoded frames of both renders are identical");
  // Same frames, same encoder, same recipe: the files are identical too.
  assert.ok((await readFile(file("first.mp4"))).equals(await readFile(file("again.mp4"))), "identical MP4 bytes");
  assert.equal(await readFile(file("again.recipe.json"), "utf8"), await readFile(file("first.recipe.json"), "utf8"));
});

test("render --recipe JSON as lossless WebM gives exactly the frames --save-frames wrote", async () => {
  const r = await cli([
    "render",
    "--recipe",
    file("first.recipe.json"),
    "--image",
    demoImage,
    "--lossless",
    "-o",
    file("again.webm"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const info = await probe(file("again.webm"));
  assert.equal(info.codec, "vp9");
  assert.equal(info.pixFmt, "gbrp");
  const recipe = parseRecipe(info.tags["COMMENT"] ?? info.tags["comment"] ?? "");
  assert.deepEqual(recipe.video, { format: "webm", crf: 16, lossless: true });
  assert.deepEqual(
    { ...recipe, video: null },
    { ...parseRecipe(await readFile(file("first.recipe.json"), "utf8")), video: null },
    "the same recipe but for the video encoding",
  );

  const frames = await readMp4Frames(file("again.webm"), W, H);
  const pngs = (await readdir(file("frames"))).sort();
  assert.equal(pngs.length, frames.shape[0]);
  assert.equal(pngs[0], "frame_00000.png");
  const size = W * H * 3;
  for (let i = 0; i < pngs.length; i++) {
    const png = await sharp(path.join(file("frames"), pngs[i]!))
      .raw()
      .toBuffer();
    assert.ok(
      png.equals(Buffer.from(frames.data.subarray(i * size, (i + 1) * size))),
      `frame ${i}: the PNG and the lossless WebM hold the same pixels`,
    );
  }
});

test("a recipe is refused for other images, another bundle, unknown fields and extra settings", async () => {
  const recipe = JSON.parse(await readFile(file("first.recipe.json"), "utf8")) as Record<string, unknown>;
  const other = file("other.png");
  await sharp({ create: { width: 80, height: 60, channels: 3, background: "#336699" } })
    .png()
    .toFile(other);
  const otherBundle = { ...recipe, bundle: { name: "big", digest: `sha256:${"0".repeat(64)}` } };
  await writeFile(file("other-bundle.json"), JSON.stringify(otherBundle));
  await writeFile(file("unknown-field.json"), JSON.stringify({ ...recipe, styles: ["noir"] }));
  await writeFile(file("version-2.json"), JSON.stringify({ ...recipe, version: 2 }));
  const farmDigest = await bundleDigest(await openBundle(tinyBundleDir()));
  const cases: [string, string[], string, RegExp][] = [
    [
      "other image",
      ["--recipe", file("first.mp4"), "--image", other],
      "INVALID_ARGUMENT",
      /image is not the recipe's: its SHA-256 is [0-9a-f]{64}, the recipe's is/,
    ],
    [
      "an end image",
      ["--recipe", file("first.mp4"), "--image", demoImage, "--end-image", demoImage],
      "INVALID_ARGUMENT",
      /without an end image/,
    ],
    [
      "other bundle",
      ["--recipe", file("other-bundle.json"), "--image", demoImage],
      "FAILED_PRECONDITION",
      new RegExp(`sha256:0{64}.*${farmDigest}`),
    ],
    [
      "unknown field",
      ["--recipe", file("unknown-field.json"), "--image", demoImage],
      "INVALID_ARGUMENT",
      /unknown field styles/,
    ],
    [
      "newer version",
      ["--recipe", file("version-2.json"), "--image", demoImage],
      "INVALID_ARGUMENT",
      /version 2 is not supported/,
    ],
    [
      "a prompt",
      ["--recipe", file("first.mp4"), "--image", demoImage, "--prompt", "x"],
      "INVALID_ARGUMENT",
      /--prompt cannot be given with --recipe/,
    ],
    [
      "a video without a recipe",
      ["--recipe", file("plain.mp4"), "--image", demoImage],
      "INVALID_ARGUMENT",
      /carries no recipe/,
    ],
  ];
  // A video without a comment tag: the first one's frames, re-encoded by ffmpeg alone.
  await run((await import("@ffmpeg-installer/ffmpeg")).default.path, [
    "-v",
    "error",
    "-y",
    "-i",
    file("first.mp4"),
    "-map_metadata",
    "-1",
    "-c",
    "copy",
    file("plain.mp4"),
  ]);
  for (const [name, args, status, message] of cases) {
    const out = file(`refused-${name.replace(/\W+/g, "-")}.mp4`);
    const r = await cli(["render", ...args, "-o", out]);
    assert.notEqual(r.code, 0, name);
    assert.match(r.stderr, new RegExp(`error \\[${status}\\]`), `${name}: ${r.stderr}`);
    assert.match(r.stderr, message, name);
    assert.equal(existsSync(out), false, `${name}: no output`);
  }
});
