/**
 * A SubmitJobRequest from the video options that `render` and `submit` share, so both commands
 * take the same flags, read images the same way, and are validated by the same JobService code.
 */
import { FarmError } from "../../shared/errors.js";
import { readImageBytes, readVideoBytes } from "./embedded/inputs.js";
import { parseSampler, parseSamplingType, parseSeed, parseUnipcVariant } from "../../shared/job/render-params.js";
import { samplerToPb, samplingModeOf, unipcVariantToPb } from "../api/job-mapping.js";
import {
  SamplingMode,
  UnipcVariant,
  type ImageInput,
  type Keyframe,
  type RenderSettings,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";

/** The video settings as command-line options. */
export const RENDER_OPTIONS = {
  image: { type: "string" },
  video: { type: "string" },
  "context-frames": { type: "string" },
  "end-image": { type: "string" },
  keyframe: { type: "string", multiple: true },
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
  sampler: { type: "string" },
  "unipc-variant": { type: "string" },
  "cfg-rescale": { type: "string" },
  cache: { type: "string" },
  "cache-threshold": { type: "string" },
  "magcache-k": { type: "string" },
  "magcache-retention": { type: "string" },
  "section-prompt": { type: "string", multiple: true },
  "prompt-blend": { type: "string" },
  "vae-tiling": { type: "boolean" },
} as const;

/** Help lines for extending a video (options that render and submit share). */
export const VIDEO_HELP = `  --video FILE            extend this video instead of starting from --image: the output is its
                          frames, then new ones cross-faded in (vanilla continues it; inverted
                          with --end-image runs toward that image); fps defaults to the video's
  --context-frames N      FramePack-Studio's context frames, 2..10 (5): the sections' 1x context
                          holds N - 1 of the video's latents`;

/** Help lines for the sampler, prompt-schedule and decode options (options that render and submit share). */
export const SAMPLING_HELP = `  --sampler euler|unipc   euler: diffusers' FramePack pipeline (default); unipc: as
                          lllyasviel's FramePack demo samples (flux shift + UniPC)
  --unipc-variant bh1|bh2 UniPC variant (bh1, as the demo; unipc only)
  --cfg-rescale R         the demo's CFG re-scale, 0..1 (0; unipc only)
  --cache none|teacache|magcache
                          teacache: skip the transformer's blocks on steps whose input
                          barely changed, as lllyasviel's FramePack TeaCache; magcache:
                          skip them while MagCache's calibrated residual magnitude
                          ratios stay near 1, as FramePack-Studio (none)
  --cache-threshold T     TeaCache's rel_l1_thresh or MagCache's error threshold, in
                          (0, 1] (0.15 teacache, 0.1 magcache)
  --magcache-k K          MagCache's max consecutive skips, an integer >= 1 (2)
  --magcache-retention R  MagCache's retention ratio, 0..1: the first R x steps of a
                          section always compute (0.25)
  --section-prompt TEXT   one per section, in video-time order (repeat; instead of
                          --prompt). --prompt may be timed: "[0s: a man waves] [2s: ...]"
  --prompt-blend N        blend each prompt change over N sections (0)
  --vae-tiling            decode in 256-pixel spatial tiles, as diffusers' vae.enable_tiling():
                          lower peak GPU memory, slightly different frames (off; recorded
                          in the recipe)`;

type OptionValue<O> = O extends { multiple: true } ? string[] : O extends { type: "boolean" } ? boolean : string;
export type RenderOptionValues = { [K in keyof typeof RENDER_OPTIONS]?: OptionValue<(typeof RENDER_OPTIONS)[K]> };

/** A number option as given; the JobService checks ranges and says which option is off. */
const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));

async function imageInput(file: string | undefined, what: string): Promise<ImageInput | undefined> {
  return file === undefined ? undefined : { source: { $case: "data", value: await readImageBytes(file, what) } };
}

/**
 * --keyframe TIME:PATH (TIME in seconds, "1.5" or "1.5s"), in the order given: the JobService
 * checks times, order and images, and names the keyframe that is off.
 */
export async function keyframesFrom(flags: readonly string[] | undefined): Promise<Keyframe[]> {
  const out: Keyframe[] = [];
  for (const [i, flag] of (flags ?? []).entries()) {
    // Split at the first colon: a time has none, a path may.
    const at = flag.indexOf(":");
    const time = at < 0 ? "" : flag.slice(0, at).trim().replace(/s$/, "");
    const file = at < 0 ? "" : flag.slice(at + 1);
    const seconds = time === "" ? Number.NaN : Number(time);
    if (!Number.isFinite(seconds) || file === "")
      throw new FarmError(
        "INVALID_ARGUMENT",
        `--keyframe must be TIME:PATH (seconds from the video's start, e.g. 1.5:key.png), got ${JSON.stringify(flag)}`,
      );
    out.push({ timeSeconds: seconds, image: await imageInput(file, `keyframe ${i + 1}`) });
  }
  return out;
}

export function renderSettingsFrom(values: RenderOptionValues): RenderSettings {
  // Checked here only as far as the request needs (the JobService checks every value again, with the same code).
  const mode =
    values.mode === undefined
      ? SamplingMode.SAMPLING_MODE_UNSPECIFIED
      : samplingModeOf(parseSamplingType(values.mode, "inverted_anti_drifting"));
  const sampler = values.sampler === undefined ? undefined : samplerToPb(parseSampler(values.sampler));
  // The variant's names only: whether the sampler has variants is the JobService's check.
  const variant =
    values["unipc-variant"] === undefined
      ? undefined
      : unipcVariantToPb(parseUnipcVariant(values["unipc-variant"], "unipc"));
  const cfgRescale = num(values["cfg-rescale"]);
  const blend = num(values["prompt-blend"]);
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
    ...(values["context-frames"] !== undefined ? { contextFrames: Number(values["context-frames"]) } : {}),
    ...(values["vae-tiling"] !== undefined ? { vaeTiling: values["vae-tiling"] } : {}),
    ...(sampler !== undefined ? { sampler } : {}),
    // Names and ranges are the JobService's check (render-params.ts), which says which is off.
    ...(values.cache !== undefined ? { cache: values.cache } : {}),
    ...(values["cache-threshold"] !== undefined ? { cacheThreshold: Number(values["cache-threshold"]) } : {}),
    ...(values["magcache-k"] !== undefined ? { magcacheK: Number(values["magcache-k"]) } : {}),
    ...(values["magcache-retention"] !== undefined ? { magcacheRetention: Number(values["magcache-retention"]) } : {}),
    ...(variant !== undefined || cfgRescale !== undefined
      ? { unipc: { variant: variant ?? UnipcVariant.UNIPC_VARIANT_UNSPECIFIED, cfgRescale } }
      : {}),
    ...(values["section-prompt"] !== undefined || blend !== undefined
      ? { promptSchedule: { sectionPrompts: values["section-prompt"] ?? [], blendSections: blend } }
      : {}),
  };
}

export async function submitRequestFrom(
  values: RenderOptionValues,
  extra: { priority?: string | undefined; idempotencyKey?: string | undefined; webhook?: string | undefined } = {},
): Promise<SubmitJobRequest> {
  const priority = num(extra.priority) ?? 0;
  if (!Number.isInteger(priority))
    throw new FarmError("INVALID_ARGUMENT", `priority must be an integer, got ${JSON.stringify(extra.priority)}`);
  const settings = renderSettingsFrom(values);
  return {
    image: await imageInput(values.image, "image"),
    endImage: await imageInput(values["end-image"], "end image"),
    keyframes: await keyframesFrom(values.keyframe),
    ...(values.video !== undefined
      ? { video: { source: { $case: "data", value: await readVideoBytes(values.video, "video") } } }
      : {}),
    settings,
    bundle: "",
    priority,
    idempotencyKey: extra.idempotencyKey ?? "",
    ...(extra.webhook !== undefined ? { webhookUrl: extra.webhook } : {}),
  };
}
