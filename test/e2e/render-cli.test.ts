/**
 * `framefarm render` as a user runs it: a real process, a real MP4 checked with ffprobe, and the
 * errors a user gets for bad input (exit code, status, message, no partial output).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import ffprobeInstaller from "@ffprobe-installer/ffprobe";
import { cliPath, repoRoot, testOutputDir } from "../support/paths.js";

const run = promisify(execFile);
const demoImage = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

async function probe(
  file: string,
): Promise<{ frames: number; width: number; height: number; fps: string; codec: string }> {
  const { stdout } = await run(ffprobeInstaller.path, [
    "-v",
    "error",
    "-count_frames",
    "-select_streams",
    "v:0",
    "-show_entries",
    "stream=nb_read_frames,width,height,r_frame_rate,codec_name",
    "-of",
    "json",
    file,
  ]);
  const s = (JSON.parse(stdout) as { streams: Record<string, string | number>[] }).streams[0]!;
  return {
    frames: Number(s["nb_read_frames"]),
    width: Number(s["width"]),
    height: Number(s["height"]),
    fps: String(s["r_frame_rate"]),
    codec: String(s["codec_name"]),
  };
}

const outDir = path.join(testOutputDir(), "e2e-render");

test("render writes an MP4 with the planned frame count, size and fps", async () => {
  await mkdir(outDir, { recursive: true });
  const out = path.join(outDir, "inverted.mp4");
  await rm(out, { force: true });
  // 40 frames at window 9 -> 2 sections (33 frames each) -> 2*9 + 1 latent frames -> 73 frames.
  const r = await cli([
    "render",
    "--image",
    demoImage,
    "--prompt",
    "a lighthouse in a storm",
    "--frames",
    "40",
    "--resolution",
    "64",
    "--steps",
    "2",
    "--fps",
    "24",
    "-o",
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const info = await probe(out);
  assert.equal(info.codec, "h264");
  assert.equal(info.fps, "24/1");
  // demo.png is 4:3; the 64 bucket nearest to it is wider than tall.
  assert.ok(info.width > info.height, `expected a landscape bucket, got ${info.width}x${info.height}`);
  assert.equal(info.frames, 73);
});

test("vanilla mode with a smaller window renders too", async () => {
  const out = path.join(outDir, "vanilla.mp4");
  const r = await cli([
    "render",
    "--image",
    demoImage,
    "--prompt",
    "waves",
    "--frames",
    "20",
    "--mode",
    "vanilla",
    "--window",
    "5",
    "--height",
    "64",
    "--width",
    "64",
    "--steps",
    "2",
    "--timings",
    `${out}.timings.json`,
    "-o",
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const info = await probe(out);
  assert.deepEqual([info.width, info.height], [64, 64]);
  // --timings: each task's wall and model time, and where the rest of a decode and the mux went.
  const timings = JSON.parse(await readFile(`${out}.timings.json`, "utf8")) as {
    jobMs: number;
    tasks: { task: string; ms: number; phases?: Record<string, number> }[];
  };
  assert.ok(timings.jobMs > 0);
  const phasesOf = (stage: string) => timings.tasks.find((t) => t.task.split(".")[1] === stage)?.phases ?? {};
  assert.deepEqual(Object.keys(phasesOf("decode")).sort(), ["preview", "read", "vae", "vae_run", "write"]);
  // The mux decodes the last section itself, encoding its frames as they come.
  assert.deepEqual(Object.keys(phasesOf("mux")).sort(), ["blend", "encode", "read", "vae", "vae_run"]);
  assert.deepEqual(Object.keys(phasesOf("denoise")).sort(), ["steps", "transformer_run", "write"]);
  const denoise = phasesOf("denoise");
  assert.ok(denoise["transformer_run"]! > 0 && denoise["transformer_run"]! <= denoise["steps"]! + 1);
  // 20 frames at window 5 -> 2 sections; vanilla decodes (1 + 2*5) latent frames -> 41 frames.
  assert.equal(info.frames, 41);
});

const badInputs: {
  name: string;
  args: (dir: string) => Promise<string[]> | string[];
  status: string;
  message: RegExp;
}[] = [
  {
    name: "missing image file",
    args: () => ["--image", "/nonexistent/x.png", "--prompt", "p", "--seconds", "1"],
    status: "NOT_FOUND",
    message: /image .*x\.png/,
  },
  {
    name: "corrupt image",
    args: async (dir) => {
      const f = path.join(dir, "corrupt.png");
      await writeFile(f, Buffer.from("\x89PNG\r\n\x1a\nthis is not a png"));
      return ["--image", f, "--prompt", "p", "--seconds", "1"];
    },
    status: "INVALID_ARGUMENT",
    message: /image/,
  },
  {
    name: "zero length",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "0"],
    status: "INVALID_ARGUMENT",
    message: /seconds/,
  },
  {
    name: "absurd length",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "100000"],
    status: "INVALID_ARGUMENT",
    message: /seconds/,
  },
  {
    name: "NaN steps",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--steps", "NaN"],
    status: "INVALID_ARGUMENT",
    message: /steps/,
  },
  {
    name: "bad resolution",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--resolution", "100"],
    status: "INVALID_ARGUMENT",
    message: /resolution/,
  },
  {
    name: "end image with vanilla",
    args: () => [
      "--image",
      demoImage,
      "--end-image",
      demoImage,
      "--mode",
      "vanilla",
      "--prompt",
      "p",
      "--seconds",
      "1",
    ],
    status: "INVALID_ARGUMENT",
    message: /end image/,
  },
  {
    name: "unknown option",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--frobnicate", "3"],
    status: "INVALID_ARGUMENT",
    message: /frobnicate/,
  },
  {
    name: "unknown mode",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--mode", "sideways"],
    status: "INVALID_ARGUMENT",
    message: /mode/,
  },
  {
    name: "empty prompt",
    args: () => ["--image", demoImage, "--prompt", "  ", "--seconds", "1"],
    status: "INVALID_ARGUMENT",
    message: /prompt/,
  },
  {
    name: "missing bundle",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--bundle", "/nonexistent-bundle"],
    status: "NOT_FOUND",
    message: /framefarm-bundle\.json/,
  },
  {
    name: "unknown execution provider",
    args: () => ["--image", demoImage, "--prompt", "p", "--seconds", "1", "--ep", "tpu"],
    status: "INVALID_ARGUMENT",
    message: /execution provider/,
  },
];

for (const bad of badInputs) {
  test(`render rejects ${bad.name} with ${bad.status} and leaves no output`, async () => {
    const dir = path.join(outDir, "bad", bad.name.replace(/\W+/g, "-"));
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const out = path.join(dir, "out.mp4");
    const r = await cli(["render", ...(await bad.args(dir)), "-o", out]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`error \\[${bad.status}\\]`), r.stderr);
    assert.match(r.stderr, bad.message);
    assert.equal(existsSync(out), false, "no output file on failure");
    assert.deepEqual(
      (await readdir(dir)).filter((f) => f.includes("partial")),
      [],
      "no partial file left behind",
    );
  });
}
