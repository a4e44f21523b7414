/**
 * The options `render` and `submit` share for what a job writes and how it is reproduced:
 * `--format mp4|webm` (or an output name ending .webm), `--save-frames DIR` (every frame as PNG),
 * `--recipe FILE` (a video framefarm made, or its .recipe.json: render it again), and saving a
 * finished job's results: the video, its recipe next to it (out.mp4 -> out.recipe.json) and the
 * frames.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import { parseRecipe } from "../../shared/job/recipe.js";
import { readVideoComment } from "../../shared/video/probe.js";
import { extractPngTar } from "../../shared/video/frames-archive.js";
import { VideoFormat, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { RENDER_OPTIONS, type RenderOptionValues } from "./job-request.js";
import { writeFileAtomically } from "./output-file.js";

export const OUTPUT_OPTIONS = {
  recipe: { type: "string" },
  format: { type: "string" },
  "save-frames": { type: "string" },
} as const;

export interface OutputOptionValues {
  recipe?: string | undefined;
  format?: string | undefined;
  "save-frames"?: string | undefined;
}

export const OUTPUT_HELP = `  --format mp4|webm       H.264 MP4 (default) or VP9 WebM; an output name ending .webm picks WebM
  --save-frames DIR       also write every frame as DIR/frame_00000.png, ...
  --recipe FILE           render a recipe again: a video framefarm made (its comment tag) or its
                          .recipe.json; give the same --image or --video (and --end-image,
                          --keyframe); the recipe sets every other setting but --format, --crf
                          and --lossless`;

/** Options a recipe sets, which may not be given with --recipe. */
const FROM_RECIPE = Object.keys(RENDER_OPTIONS).filter(
  (k) => !["image", "video", "end-image", "keyframe", "crf", "lossless"].includes(k),
) as (keyof RenderOptionValues)[];

const FORMATS: Record<string, VideoFormat> = { mp4: VideoFormat.VIDEO_FORMAT_MP4, webm: VideoFormat.VIDEO_FORMAT_WEBM };

/** --format, checked against the output name's extension; from the extension when not given. */
export function videoFormatFor(flag: string | undefined, output: string | undefined): VideoFormat {
  const ext = output === undefined ? "" : path.extname(output).toLowerCase().slice(1);
  const byName = FORMATS[ext];
  if (flag === undefined) return byName ?? VideoFormat.VIDEO_FORMAT_UNSPECIFIED;
  const format = FORMATS[flag.toLowerCase()];
  if (format === undefined)
    throw new FarmError("INVALID_ARGUMENT", `--format must be mp4 or webm, got ${JSON.stringify(flag)}`);
  if (byName !== undefined && byName !== format)
    throw new FarmError("INVALID_ARGUMENT", `--format ${flag} does not match the output name ${output}`);
  return format;
}

/** A recipe's JSON text from a .json file or from a video's comment tag. */
export async function readRecipeFile(file: string): Promise<string> {
  let text: string | null;
  try {
    text = file.toLowerCase().endsWith(".json") ? await readFile(file, "utf8") : await readVideoComment(file);
  } catch (err) {
    if (err instanceof FarmError) throw err;
    throw new FarmError("NOT_FOUND", `recipe ${file} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  if (text === null)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${file} carries no recipe (its comment tag is empty): give a video framefarm made, or its .recipe.json`,
    );
  parseRecipe(text); // refused here already, before anything is sent
  return text;
}

/** Adds the output options (and a recipe) to a request built from the render options. */
export async function applyOutputOptions(
  req: SubmitJobRequest,
  values: RenderOptionValues & OutputOptionValues,
  output: string | undefined,
): Promise<SubmitJobRequest> {
  const format = videoFormatFor(values.format, output);
  if (values.recipe !== undefined) {
    const clash = FROM_RECIPE.find((k) => values[k] !== undefined);
    if (clash !== undefined)
      throw new FarmError("INVALID_ARGUMENT", `--${clash} cannot be given with --recipe: the recipe sets it`);
    req.recipe = await readRecipeFile(values.recipe);
  }
  req.settings = { ...req.settings!, format, ...(values["save-frames"] !== undefined ? { saveFrames: true } : {}) };
  return req;
}

/** out.mp4 -> out.recipe.json (next to the video). */
export function recipeSidecar(output: string): string {
  const ext = path.extname(output);
  return `${ext === "" ? output : output.slice(0, -ext.length)}.recipe.json`;
}

/** Writes a finished job's video, its recipe beside it and, when asked, its frames. */
export async function saveJobOutputs(
  fetch: {
    video(): Promise<Uint8Array>;
    recipe: (() => Promise<Uint8Array>) | null;
    frames: (() => Promise<Uint8Array>) | null;
  },
  output: string,
  framesDir: string | undefined,
): Promise<string[]> {
  const written = [output];
  await writeFileAtomically(output, await fetch.video());
  if (fetch.recipe !== null) {
    await writeFileAtomically(recipeSidecar(output), await fetch.recipe());
    written.push(recipeSidecar(output));
  }
  if (framesDir !== undefined) {
    if (fetch.frames === null) throw new FarmError("INTERNAL", "the job saved no frames");
    const n = await extractPngTar(await fetch.frames(), framesDir);
    written.push(`${framesDir} (${n} PNG frames)`);
  }
  return written;
}
