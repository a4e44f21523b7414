/**
 * The ffmpeg encoder settings of each video format: H.264 in MP4 (libx264 yuv420p at a crf, or
 * libx264rgb qp 0 for exact RGB frames) and VP9 in WebM (libvpx-vp9 yuv420p at a constant quality,
 * or lossless VP9 in planar RGB, also exact). Both run single-pass with fixed settings, so the same
 * frames give the same file.
 */
import type { VideoFormatName } from "../job/recipe.js";

export interface EncoderSettings {
  codec: string;
  /** ffmpeg output options, one "-name value" per element (fluent-ffmpeg splits them at the space). */
  options: string[];
  container: VideoFormatName;
}

export function encoderSettings(format: VideoFormatName, crf: number, lossless: boolean): EncoderSettings {
  if (format === "webm") {
    return lossless
      ? {
          codec: "libvpx-vp9",
          options: ["-pix_fmt gbrp", "-lossless 1", "-deadline good", "-cpu-used 4"],
          container: "webm",
        }
      : {
          codec: "libvpx-vp9",
          options: ["-pix_fmt yuv420p", `-crf ${crf}`, "-b:v 0", "-deadline good", "-cpu-used 4"],
          container: "webm",
        };
  }
  return lossless
    ? { codec: "libx264rgb", options: ["-pix_fmt rgb24", "-qp 0", "-movflags +faststart"], container: "mp4" }
    : { codec: "libx264", options: ["-pix_fmt yuv420p", `-crf ${crf}`, "-movflags +faststart"], container: "mp4" };
}

/** The content type of a stored video of the format. */
export const videoContentType = (format: VideoFormatName): string => (format === "webm" ? "video/webm" : "video/mp4");
