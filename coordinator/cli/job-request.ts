/**
 * A SubmitJobRequest from the video options that `render` and `submit` share, so both commands
 * take the same flags, read images the same way, and are validated by the same JobService code.
 */
import { FarmError } from "../../shared/errors.js";
import { readImageBytes } from "./embedded/inputs.js";
import { parseSamplingType, parseSeed } from "../../shared/job/render-params.js";
import { samplingModeOf } from "../api/job-mapping.js";
import {
  SamplingMode,
  type ImageInput,
  type RenderSettings,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";

/** The video settings as command-line options. */
export const RENDER_OPTIONS = {
  image: { type: "string" },
  "end-image": { type: "string" },
  prompt: { type: "string" },
  "negative-prompt": { type: "string" },
  seconds: { type: "string" },
  frames: { type: "string" },
  mode: { type: "string" },
  steps: { type: "string" },
  guidance: { type: "string" },
  cfg: { type: "string" },
  seed: { type: "string" },
  window: { type: "string" },
  resolution: { type: "string" },
  height: { type: "string" },
  width: { type: "string" },
  fps: { type: "string" },
  crf: { type: "string" },
  lossless: { type: "boolean" },
} as const;

export type RenderOptionValues = {
  [K in keyof typeof RENDER_OPTIONS]?: (typeof RENDER_OPTIONS)[K]["type"] extends "boolean" ? boolean : string;
};

/** A number option as given; the JobService checks ranges and says which option is off. */
const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));

async function imageInput(file: string | undefined, what: string): Promise<ImageInput | undefined> {
  return file === undefined ? undefined : { source: { $case: "data", value: await readImageBytes(file, what) } };
}

export function renderSettingsFrom(values: RenderOptionValues): RenderSettings {
  // Checked here only as far as the request needs (the JobService checks every value again, with the same code).
  const mode =
    values.mode === undefined
      ? SamplingMode.SAMPLING_MODE_UNSPECIFIED
      : samplingModeOf(parseSamplingType(values.mode, "inverted_anti_drifting"));
  return {
    prompt: values.prompt ?? "",
    ...(values["negative-prompt"] !== undefined ? { negativePrompt: values["negative-prompt"] } : {}),
    ...(values.seconds !== undefined
      ? { length: { $case: "seconds", value: Number(values.seconds) } }
      : values.frames !== undefined
        ? { length: { $case: "numFrames", value: Number(values.frames) } }
        : {}),
    mode,
    steps: num(values.steps),
    guidanceScale: num(values.guidance),
    trueCfgScale: num(values.cfg),
    seed: values.seed === undefined ? undefined : parseSeed(values.seed),
    latentWindowSize: num(values.window),
    resolution: num(values.resolution),
    height: num(values.height),
    width: num(values.width),
    fps: num(values.fps),
    crf: num(values.crf),
    ...(values.lossless === true ? { lossless: true } : {}),
  };
}

export async function submitRequestFrom(
  values: RenderOptionValues,
  extra: { priority?: string | undefined; idempotencyKey?: string | undefined } = {},
): Promise<SubmitJobRequest> {
  const priority = num(extra.priority) ?? 0;
  if (!Number.isInteger(priority))
    throw new FarmError("INVALID_ARGUMENT", `priority must be an integer, got ${JSON.stringify(extra.priority)}`);
  const settings = renderSettingsFrom(values);
  return {
    image: await imageInput(values.image, "image"),
    endImage: await imageInput(values["end-image"], "end image"),
    settings,
    bundle: "",
    priority,
    idempotencyKey: extra.idempotencyKey ?? "",
  };
}
