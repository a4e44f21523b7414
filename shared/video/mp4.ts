/**
 * H.264 MP4 encoding of uint8 RGB frames through fluent-ffmpeg, with the ffmpeg binary that the
 * project's npm install provides (@ffmpeg-installer). Output is written to a temporary file next to
 * the target and renamed at the end, so a failed encode never leaves a partial video behind.
 */
import { mkdtemp, readFile, rename, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import ffmpeg from "fluent-ffmpeg";
import { FarmError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";
import type { VideoFormatName } from "../job/recipe.js";
import { encoderSettings } from "./codecs.js";

export interface Mp4Options {
  fps: number;
  /** x264 constant rate factor: 0 lossless .. 51 worst; FramePack's demo default is 16. */
  crf: number;
  /** Exact RGB frames (libx264rgb, qp 0); crf is then ignored. */
  lossless?: boolean;
  /** H.264 in MP4 (the default) or VP9 in WebM (shared/video/codecs.ts). */
  format?: VideoFormatName;
  /** The container's `comment` tag (ffprobe: format.tags.comment; COMMENT in WebM): the job's recipe. */
  comment?: string;
  /** Scale down (area average) so that neither side exceeds this, keeping even sizes: previews. */
  maxSide?: number;
  /** x264's speed preset (ffmpeg's default is medium): previews trade size for time. */
  preset?: string;
}

/** Even output size with neither side above maxSide, aspect kept; null when no scaling is needed. */
export function scaledSize(width: number, height: number, maxSide: number): { width: number; height: number } | null {
  if (Math.max(width, height) <= maxSide) return null;
  const f = maxSide / Math.max(width, height);
  const even = (v: number): number => Math.max(2, 2 * Math.round((v * f) / 2));
  return { width: even(width), height: even(height) };
}

/**
 * The ffmpeg binary from @ffmpeg-installer, loaded on first use: that package throws at import
 * when its binary is missing, which must not stop commands that never encode video.
 */
export async function ffmpegPath(): Promise<string> {
  try {
    const installer = (await import("@ffmpeg-installer/ffmpeg")) as { default: { path: string } };
    return installer.default.path;
  } catch (err) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `ffmpeg is not installed (${(err as Error).message}); run npm ci in the framefarm folder`,
      { cause: err },
    );
  }
}

export function validateMp4Options({ fps, crf }: Mp4Options): void {
  if (!Number.isFinite(fps) || fps < 1 || fps > 240)
    throw new FarmError("INVALID_ARGUMENT", `fps must be between 1 and 240, got ${fps}`);
  if (!Number.isInteger(crf) || crf < 0 || crf > 51)
    throw new FarmError("INVALID_ARGUMENT", `crf must be an integer between 0 and 51, got ${crf}`);
}

/** Raw uint8 RGB frames [H, W, 3] of one size, produced as the encoder takes them. */
export interface RawFrames {
  width: number;
  height: number;
  frames: Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** A [T, H, W, 3] uint8 tensor's frames as RawFrames (views, no copies). */
export function tensorFrames(frames: Tensor<"uint8">): RawFrames {
  const [t, h, w, c] = frames.shape;
  if (frames.shape.length !== 4 || c !== 3 || t === undefined || h === undefined || w === undefined || t < 1) {
    throw new FarmError("INVALID_ARGUMENT", `frames must be [T, H, W, 3] uint8, got ${frames.describe()}`);
  }
  const frameBytes = h * w * 3;
  return {
    width: w,
    height: h,
    frames: {
      *[Symbol.iterator]() {
        for (let i = 0; i < t; i++) yield frames.data.subarray(i * frameBytes, (i + 1) * frameBytes);
      },
    },
  };
}

/** Encodes frames [T, H, W, 3] (uint8 RGB) to an MP4 (or, with format "webm", WebM) file at outFile. */
export async function writeMp4(frames: Tensor<"uint8">, outFile: string, options: Mp4Options): Promise<void> {
  return writeMp4Frames(tensorFrames(frames), outFile, options);
}

/**
 * Encodes frames as they are produced: ffmpeg encodes the first frames while later ones are still
 * being made. At least one frame; each exactly width * height * 3 bytes.
 */
export async function writeMp4Frames(source: RawFrames, outFile: string, options: Mp4Options): Promise<void> {
  validateMp4Options(options);
  const { width: w, height: h } = source;
  if (h % 2 !== 0 || w % 2 !== 0)
    throw new FarmError("INVALID_ARGUMENT", `H.264 (yuv420p) needs even sizes, got ${w}x${h}`);

  const binary = await ffmpegPath();
  const target = path.resolve(outFile);
  const encoder = encoderSettings(options.format ?? "mp4", options.crf, options.lossless === true);
  const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.partial.${encoder.container}`);
  const input = new PassThrough();
  const frameBytes = h * w * 3;

  try {
    await new Promise<void>((resolve, reject) => {
      const command = ffmpeg()
        .setFfmpegPath(binary)
        .input(input)
        .inputFormat("rawvideo")
        .inputOptions(["-pix_fmt rgb24", `-video_size ${w}x${h}`, `-framerate ${options.fps}`])
        .videoCodec(encoder.codec)
        .outputOptions(encoder.options)
        .format(encoder.container)
        .on("error", (err: Error, _stdout: string | null, stderr: string | null) => {
          const tail = (stderr ?? "").trim().split("\n").slice(-3).join(" | ");
          reject(
            new FarmError("INTERNAL", `ffmpeg failed writing ${target}: ${err.message}${tail ? ` (${tail})` : ""}`, {
              cause: err,
            }),
          );
        })
        .on("end", () => resolve());
      // Two arguments, so that fluent-ffmpeg passes the text whole (it splits one "-opt value" at spaces).
      if (options.comment !== undefined) command.outputOptions("-metadata", `comment=${options.comment}`);
      const scaled = options.maxSide === undefined ? null : scaledSize(w, h, options.maxSide);
      if (scaled !== null) command.outputOptions("-vf", `scale=${scaled.width}:${scaled.height}:flags=area`);
      if (options.preset !== undefined) command.outputOptions("-preset", options.preset);
      command.save(temp);
      // Feed frames one at a time, honouring back-pressure.
      void (async () => {
        let count = 0;
        for await (const frame of source.frames) {
          if (frame.length !== frameBytes)
            throw new FarmError("INVALID_ARGUMENT", `frame ${count} has ${frame.length} bytes, expected ${frameBytes}`);
          count++;
          const view = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
          if (!input.write(view)) await new Promise((r) => input.once("drain", r));
        }
        if (count === 0) throw new FarmError("INVALID_ARGUMENT", "no frames to encode");
        input.end();
      })().catch((err: unknown) => {
        reject(err);
        command.kill("SIGKILL");
      });
    });
    await rename(temp, target);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

/** Decodes an MP4's video to uint8 RGB frames [T, H, W, 3] (for verifying lossless renders). */
export async function readMp4Frames(file: string, width: number, height: number): Promise<Tensor<"uint8">> {
  const binary = await ffmpegPath();
  // Raw frames go to a file, not a pipe: fluent-ffmpeg fails a piped output whose stream closes
  // 20 ms before the ffmpeg process's exit is seen ("Output stream closed"), which a loaded
  // machine can take longer than.
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-frames-"));
  try {
    const raw = path.join(dir, "frames.rgb");
    await new Promise<void>((resolve, reject) => {
      ffmpeg(file)
        .setFfmpegPath(binary)
        .outputOptions(["-f rawvideo", "-pix_fmt rgb24"])
        .on("error", (err: Error) =>
          reject(new FarmError("INVALID_ARGUMENT", `cannot decode ${file}: ${err.message}`, { cause: err })),
        )
        .on("end", () => resolve())
        .save(raw);
    });
    const data = new Uint8Array(await readFile(raw));
    const frame = width * height * 3;
    if (data.length % frame !== 0)
      throw new FarmError("DATA_LOSS", `${file}: ${data.length} bytes are not whole ${width}x${height} RGB frames`);
    return new Tensor("uint8", [data.length / frame, height, width, 3], data);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
