/**
 * Input videos (--video) as the farm checks and reads them, through the project's ffmpeg: facts of
 * a good video, every kind of bad input refused with the status and field named, and frames read
 * back exactly (lossless RGB) from any start.
 */
import { before, after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Tensor } from "../../shared/tensor/tensor.js";
import { writeMp4 } from "../../shared/video/mp4.js";
import { inspectVideo, readVideoFrames, DEFAULT_VIDEO_LIMITS } from "../../shared/video/video-input.js";
import { FarmError, type StatusName } from "../../shared/errors.js";
import { repoRoot } from "../support/paths.js";

let dir: string;
let lossless: Uint8Array;
let frames: Tensor<"uint8">;
const [T, H, W] = [20, 24, 40];

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-video-input-"));
  const data = new Uint8Array(T * H * W * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + Math.floor(i / 997) * 13) % 256;
  frames = new Tensor("uint8", [T, H, W, 3], data);
  await writeMp4(frames, path.join(dir, "lossless.mp4"), { fps: 24, crf: 0, lossless: true });
  lossless = new Uint8Array(await readFile(path.join(dir, "lossless.mp4")));
});

after(() => rm(dir, { recursive: true, force: true }));

const refused = (status: StatusName, pattern: RegExp) => (e: unknown) =>
  e instanceof FarmError && e.status === status && pattern.test(e.message);

test("a video's decoded size, frame count and frame rate", async () => {
  const info = await inspectVideo(lossless);
  assert.deepEqual(
    { ...info, format: info.format.split(",")[0] },
    { width: W, height: H, frames: T, fps: 24, format: "mov" },
  );
});

test("frames read back exactly, from the start or from any frame", async () => {
  const all: Uint8Array[] = [];
  for await (const f of readVideoFrames(lossless, { width: W, height: H }, 0, T)) all.push(f);
  assert.equal(all.length, T);
  const size = H * W * 3;
  all.forEach((f, i) => assert.ok(Buffer.from(f).equals(Buffer.from(frames.data.subarray(i * size, (i + 1) * size)))));
  const some: Uint8Array[] = [];
  for await (const f of readVideoFrames(lossless, { width: W, height: H }, 13, 4)) some.push(f);
  assert.deepEqual(
    some.map((f) => Buffer.from(f).toString("hex")),
    all.slice(13, 17).map((f) => Buffer.from(f).toString("hex")),
  );
  await assert.rejects(
    async () => {
      for await (const _ of readVideoFrames(lossless, { width: W, height: H }, 18, 5));
    },
    refused("DATA_LOSS", /gave 2 of frames 18\.\.22/),
  );
});

test("no video, a still image, a truncated or empty file are INVALID_ARGUMENT naming the field", async () => {
  const png = new Uint8Array(await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png")));
  await assert.rejects(inspectVideo(png), refused("INVALID_ARGUMENT", /^video is a still image \(png_pipe\)/));
  await assert.rejects(
    inspectVideo(new TextEncoder().encode("not a video at all, only text ".repeat(40))),
    refused("INVALID_ARGUMENT", /^video is not a video ffmpeg can read/),
  );
  await assert.rejects(inspectVideo(new Uint8Array()), refused("INVALID_ARGUMENT", /^video is empty/));
  await assert.rejects(
    inspectVideo(lossless.subarray(0, Math.floor(lossless.length / 2))),
    refused("INVALID_ARGUMENT", /^video (is not a video ffmpeg can read|cannot be decoded)/),
  );
});

test("an audio-only file has no video stream", async () => {
  const { execFile } = await import("node:child_process");
  const { promisify } = await import("node:util");
  const { ffmpegPath } = await import("../../shared/video/mp4.js");
  const audio = path.join(dir, "tone.m4a");
  await promisify(execFile)(await ffmpegPath(), ["-v", "error", "-f", "lavfi", "-i", "sine=duration=0.5", audio]);
  await assert.rejects(
    inspectVideo(new Uint8Array(await readFile(audio))),
    refused("INVALID_ARGUMENT", /^video has no video stream/),
  );
});

test("over a cap (bytes, frames, frame size, duration) is RESOURCE_EXHAUSTED naming the cap", async () => {
  const caps = DEFAULT_VIDEO_LIMITS;
  await assert.rejects(
    inspectVideo(lossless, { ...caps, maxBytes: 100 }),
    refused("RESOURCE_EXHAUSTED", /the limit is 100 bytes/),
  );
  await assert.rejects(
    inspectVideo(lossless, { ...caps, maxFrames: 10 }),
    refused("RESOURCE_EXHAUSTED", /more than 10 frames/),
  );
  await assert.rejects(
    inspectVideo(lossless, { ...caps, maxPixels: 100 }),
    refused("RESOURCE_EXHAUSTED", /40x24 pixels/),
  );
  await assert.rejects(
    inspectVideo(lossless, { ...caps, maxSeconds: 0.5 }),
    refused("RESOURCE_EXHAUSTED", /the limit is 0.5 s/),
  );
});
