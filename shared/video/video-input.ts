/**
 * Input videos (--video, a video to extend): checked before anything is stored, as images are
 * (size caps, then the container, the stream, every frame decoded: a file that is no video, has no
 * video stream, is a still image or does not decode whole is INVALID_ARGUMENT naming the field; one
 * over a cap is RESOURCE_EXHAUSTED naming the cap), and their frames read back as RGB.
 *
 * Frames are what the project's ffmpeg (@ffmpeg-installer, through fluent-ffmpeg) decodes: every
 * decoded frame of the first video stream in order (-vsync passthrough: no frame dropped or
 * repeated for a frame rate), converted to RGB by ffmpeg's default scaler. Every node runs the same
 * binary, so every node reads the same frames. ffprobe (@ffprobe-installer) reads the container's
 * facts only: format, stream kind, declared size and frame rate.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { promisify } from "node:util";
import ffmpeg from "fluent-ffmpeg";
import { FarmError } from "../errors.js";
import { DEFAULT_IMAGE_LIMITS } from "../image/decode.js";
import { ffmpegPath } from "./mp4.js";
import { ffprobePath } from "./probe.js";

const run = promisify(execFile);

export interface VideoLimits {
  /** Largest file accepted, in bytes (an image's limit: both travel in one request). */
  maxBytes: number;
  /** Largest frame, width x height and per side (an image's limits). */
  maxPixels: number;
  maxSide: number;
  /** Most frames, and longest duration the container declares (seconds). */
  maxFrames: number;
  maxSeconds: number;
}

export const DEFAULT_VIDEO_LIMITS: VideoLimits = {
  maxBytes: DEFAULT_IMAGE_LIMITS.maxBytes,
  maxPixels: DEFAULT_IMAGE_LIMITS.maxPixels,
  maxSide: DEFAULT_IMAGE_LIMITS.maxSide,
  maxFrames: 7200,
  maxSeconds: 600,
};

export interface VideoInfo {
  /** Decoded frame size (after any rotation ffmpeg applies). */
  width: number;
  height: number;
  /** Frames ffmpeg decodes from it. */
  frames: number;
  /** The stream's average frame rate, or null when the container gives none. */
  fps: number | null;
  /** The container as ffprobe names it. */
  format: string;
}

/** Runs work with the bytes in a temporary file (ffmpeg seeks in MP4s, so a pipe will not do). */
async function withFile<T>(bytes: Uint8Array, work: (file: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-video-"));
  try {
    const file = path.join(dir, "input");
    await writeFile(file, bytes);
    return await work(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** ffmpeg's last message line, without the temporary file's name. */
const lastLine = (err: unknown, file: string): string => {
  const e = err as { stderr?: string | Buffer; message: string };
  const text = String(e.stderr ?? "").trim() || e.message;
  return text.split("\n").slice(-1)[0]!.split(`${file}: `).join("").trim();
};

function rate(r: string | undefined): number | null {
  const m = /^(\d+)\/(\d+)$/.exec(r ?? "");
  if (m === null || Number(m[1]) === 0 || Number(m[2]) === 0) return null;
  return Number(m[1]) / Number(m[2]);
}

interface ProbeJson {
  streams?: { codec_type?: string; width?: number; height?: number; avg_frame_rate?: string; r_frame_rate?: string }[];
  format?: { format_name?: string; duration?: string };
}

/**
 * Checks an uploaded video as the farm accepts it (see the file comment) and tells its decoded size,
 * frame count and frame rate. `what` names the field in messages ("video").
 */
export async function inspectVideo(
  bytes: Uint8Array,
  limits: VideoLimits = DEFAULT_VIDEO_LIMITS,
  what = "video",
): Promise<VideoInfo> {
  if (bytes.length === 0) throw new FarmError("INVALID_ARGUMENT", `${what} is empty (0 bytes)`);
  if (bytes.length > limits.maxBytes)
    throw new FarmError(
      "RESOURCE_EXHAUSTED",
      `${what} is ${bytes.length} bytes; the limit is ${limits.maxBytes} bytes`,
    );
  const [probe, decode] = await Promise.all([ffprobePath(), ffmpegPath()]);
  return withFile(bytes, async (file) => {
    let info: ProbeJson;
    try {
      const { stdout } = await run(
        probe,
        [
          "-v",
          "error",
          "-show_entries",
          "format=format_name,duration:stream=codec_type,width,height,avg_frame_rate,r_frame_rate",
          "-of",
          "json",
          file,
        ],
        { maxBuffer: 1 << 20 },
      );
      info = JSON.parse(stdout) as ProbeJson;
    } catch (err) {
      throw new FarmError("INVALID_ARGUMENT", `${what} is not a video ffmpeg can read: ${lastLine(err, file)}`, {
        cause: err,
      });
    }
    const format = info.format?.format_name ?? "";
    // ffmpeg reads a PNG or JPEG as a one-frame video; an image is not a video to extend.
    if (format === "image2" || format.endsWith("_pipe"))
      throw new FarmError("INVALID_ARGUMENT", `${what} is a still image (${format}), not a video`);
    const stream = info.streams?.find((s) => s.codec_type === "video");
    if (stream === undefined)
      throw new FarmError("INVALID_ARGUMENT", `${what} has no video stream (container ${format || "unknown"})`);
    checkSize(what, stream.width ?? 0, stream.height ?? 0, limits);
    const duration = Number(info.format?.duration);
    if (Number.isFinite(duration) && duration > limits.maxSeconds)
      throw new FarmError(
        "RESOURCE_EXHAUSTED",
        `${what} lasts ${duration.toFixed(1)} s; the limit is ${limits.maxSeconds} s`,
      );
    const frames = await countFrames(decode, file, what, limits.maxFrames);
    const size = await firstFrameSize(decode, file, what);
    checkSize(what, size.width, size.height, limits);
    return { ...size, frames, fps: rate(stream.avg_frame_rate) ?? rate(stream.r_frame_rate), format };
  });
}

function checkSize(what: string, width: number, height: number, limits: VideoLimits): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new FarmError("INVALID_ARGUMENT", `${what} has no valid frame size (${width}x${height})`);
  if (width > limits.maxSide || height > limits.maxSide || width * height > limits.maxPixels)
    throw new FarmError(
      "RESOURCE_EXHAUSTED",
      `${what} is ${width}x${height} pixels; the limit is ${limits.maxPixels} pixels and ${limits.maxSide} per side`,
    );
}

/** The decoder's common arguments: the first video stream, every frame, stop at the first error. */
const DECODE_INPUT = ["-v", "error", "-xerror"];
const DECODE_OUTPUT = ["-map", "0:v:0", "-vsync", "passthrough"];

/** Decodes every frame (up to the cap and one more), each shrunk to one grey byte, and counts them. */
async function countFrames(binary: string, file: string, what: string, maxFrames: number): Promise<number> {
  let stdout: Buffer;
  try {
    ({ stdout } = await run(
      binary,
      [
        ...DECODE_INPUT,
        "-i",
        file,
        ...DECODE_OUTPUT,
        "-frames:v",
        String(maxFrames + 1),
        "-vf",
        "scale=1:1",
        "-pix_fmt",
        "gray",
        "-f",
        "rawvideo",
        "-",
      ],
      { encoding: "buffer", maxBuffer: maxFrames + 1024 },
    ));
  } catch (err) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} cannot be decoded (corrupt or truncated?): ${lastLine(err, file)}`,
      {
        cause: err,
      },
    );
  }
  if (stdout.length === 0) throw new FarmError("INVALID_ARGUMENT", `${what} has no frames`);
  if (stdout.length > maxFrames)
    throw new FarmError("RESOURCE_EXHAUSTED", `${what} has more than ${maxFrames} frames; the limit is ${maxFrames}`);
  return stdout.length;
}

/** The first frame's decoded size, from its PPM header (what the frame reader will get). */
async function firstFrameSize(binary: string, file: string, what: string): Promise<{ width: number; height: number }> {
  try {
    const { stdout } = await run(
      binary,
      [...DECODE_INPUT, "-i", file, ...DECODE_OUTPUT, "-frames:v", "1", "-f", "image2pipe", "-vcodec", "ppm", "-"],
      { encoding: "buffer", maxBuffer: 1 << 30 },
    );
    const m = /^P6\s+(\d+)\s+(\d+)\s/.exec(stdout.subarray(0, 64).toString("latin1"));
    if (m === null) throw new Error("no PPM header");
    return { width: Number(m[1]), height: Number(m[2]) };
  } catch (err) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} cannot be decoded (corrupt or truncated?): ${lastLine(err, file)}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Frames [first, first + count) of a video `inspectVideo` accepted, as RGB [H, W, 3] bytes of its
 * decoded size, one at a time as the consumer asks (stopping ffmpeg when it stops asking).
 */
export async function* readVideoFrames(
  bytes: Uint8Array,
  size: { width: number; height: number },
  first: number,
  count: number,
  what = "video",
): AsyncGenerator<Uint8Array> {
  if (count <= 0) return;
  const binary = await ffmpegPath();
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-video-"));
  const out = new PassThrough();
  let failure: Error | null = null;
  const file = path.join(dir, "input");
  try {
    await writeFile(file, bytes);
    const command = ffmpeg(file)
      .setFfmpegPath(binary)
      .inputOptions(DECODE_INPUT.slice(2))
      .outputOptions([...DECODE_OUTPUT, "-frames:v", String(count), "-pix_fmt", "rgb24", "-f", "rawvideo"])
      .on("error", (err: Error, _o: unknown, stderr: string | null) => {
        if (out.destroyed) return;
        failure = new FarmError(
          "DATA_LOSS",
          `${what} stopped decoding: ${err.message}${stderr ? ` (${stderr.trim().split("\n").slice(-1)[0]})` : ""}`,
          { cause: err },
        );
        out.destroy(failure);
      });
    // Frames before `first` are decoded but not converted: select passes the rest on.
    if (first > 0) command.videoFilters(`select=gte(n\\,${first})`);
    command.pipe(out, { end: true });
    const frameBytes = size.width * size.height * 3;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let yielded = 0;
    try {
      for await (const chunk of out as AsyncIterable<Buffer>) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        while (pendingBytes >= frameBytes && yielded < count) {
          const all = Buffer.concat(pending);
          yield new Uint8Array(all.buffer, all.byteOffset, frameBytes).slice();
          yielded++;
          pending = [all.subarray(frameBytes)];
          pendingBytes -= frameBytes;
        }
      }
    } catch (err) {
      throw failure ?? err;
    } finally {
      command.kill("SIGKILL");
    }
    if (yielded < count)
      throw new FarmError("DATA_LOSS", `${what} gave ${yielded} of frames ${first}..${first + count - 1}`);
  } finally {
    out.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}
