/**
 * Reading a video's `comment` tag with ffprobe (from @ffprobe-installer): where framefarm puts a
 * render's recipe. MP4 reports it as format.tags.comment, WebM (Matroska) as COMMENT.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { FarmError } from "../errors.js";

const run = promisify(execFile);

export async function ffprobePath(): Promise<string> {
  try {
    const installer = (await import("@ffprobe-installer/ffprobe")) as { default: { path: string } };
    return installer.default.path;
  } catch (err) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `ffprobe is not installed (${(err as Error).message}); run npm ci in the framefarm folder`,
      { cause: err },
    );
  }
}

/** The container-level tags of a video file (names as ffprobe reports them). */
export async function readVideoTags(file: string): Promise<Record<string, string>> {
  const binary = await ffprobePath();
  let stdout: string;
  try {
    ({ stdout } = await run(binary, ["-v", "error", "-show_entries", "format_tags", "-of", "json", file], {
      maxBuffer: 64 << 20,
    }));
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new FarmError(
      "INVALID_ARGUMENT",
      `cannot read ${file} as a video: ${(e.stderr ?? e.message).trim().split("\n").slice(-1)[0]}`,
      { cause: err },
    );
  }
  return (JSON.parse(stdout) as { format?: { tags?: Record<string, string> } }).format?.tags ?? {};
}

/** The video's comment tag, or null when it has none. */
export async function readVideoComment(file: string): Promise<string | null> {
  const tags = await readVideoTags(file);
  const key = Object.keys(tags).find((k) => k.toLowerCase() === "comment");
  return key === undefined ? null : tags[key]!;
}
