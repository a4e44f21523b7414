/**
 * A render's recipe: everything that fixes its frames (prompts, seed, sampler, step cache, steps,
 * guidance, CFG, window, mode, size, frame count, fps, VAE tiling, LoRAs), the SHA-256 of its input images
 * (keyframes with their times),
 * the digest of the model bundle that made it and the framefarm version, as one JSON document.
 * Every video a farm makes carries it (the container's `comment` tag) and the farm stores it next
 * to the video (`recipe.json`); `framefarm render --recipe` renders it again, bit for bit on the
 * same bundle and execution provider.
 *
 * The images (and a video to extend) are named by digest, not embedded or named by path: a path means
 * nothing on another machine or farm, and an image can be up to 50 MiB, too much for a metadata tag.
 * So a recipe is rendered again with the images given anew, and refused when their SHA-256 differs.
 *
 * Parsing is strict: another format, another version or an unknown field is INVALID_ARGUMENT, since
 * a recipe read only in part would render something other than what it describes.
 */
import { createHash } from "node:crypto";
import { FarmError } from "../errors.js";
import { SAMPLING_TYPES, type SamplingType } from "../bundle/manifest.js";
import { skipsSteps, type RenderParams } from "./render-params.js";

export const RECIPE_FORMAT = "framefarm-recipe";
export const RECIPE_VERSION = 1;
export const VIDEO_FORMATS = ["mp4", "webm"] as const;
export type VideoFormatName = (typeof VIDEO_FORMATS)[number];
/** The sampler and step cache of jobs that do not name one. */
export const DEFAULT_SAMPLER = "flow_match_euler";
export const DEFAULT_CACHE = "none";

/** A keyframe as a recipe names it: its time and its image's SHA-256. */
export interface RecipeKeyframe {
  time_seconds: number;
  sha256: string;
}

/** A LoRA as a recipe names it: its label, its file's SHA-256 and its weight, in the job's order. */
export interface RecipeLora {
  name: string;
  sha256: string;
  weight: number;
}

export interface Recipe {
  format: typeof RECIPE_FORMAT;
  version: typeof RECIPE_VERSION;
  framefarm_version: string;
  bundle: { name: string; digest: string };
  /**
   * start_sha256 is null when the job extends a video, whose file video_sha256 names (absent
   * otherwise); keyframes: present only when the render had keyframes (older recipes never have them).
   */
  images: {
    start_sha256: string | null;
    end_sha256: string | null;
    video_sha256?: string;
    keyframes?: RecipeKeyframe[];
  };
  prompt: string;
  negative_prompt: string | null;
  /** Decimal: torch seeds are unsigned 64-bit, more than a JSON number holds exactly. */
  seed: string;
  sampler: string;
  /** UniPC's variant (bh1, bh2) with the unipc sampler, else null. */
  unipc_variant: string | null;
  /** lllyasviel's CFG re-scale (0 unless the unipc sampler was asked for one). */
  cfg_rescale: number;
  /** Prompts per section in video-time order, or null when `prompt` (perhaps timed) is used. */
  section_prompts: string[] | null;
  prompt_blend_sections: number;
  cache: string;
  /** The cache's threshold; present only when `cache` is teacache or magcache (older recipes never have it). */
  cache_threshold?: number;
  /** MagCache's K and retention ratio; present only when `cache` is magcache. */
  magcache_k?: number;
  magcache_retention?: number;
  /** Extending a video: Studio's context frames (present only then). */
  context_frames?: number;
  steps: number;
  guidance_scale: number;
  true_cfg_scale: number;
  latent_window_size: number;
  mode: SamplingType;
  num_frames: number;
  /** The bucket resolution asked for (the size then follows from the image), or null for an exact size. */
  resolution: number | null;
  /** The render size either way. */
  height: number;
  width: number;
  fps: number;
  /** diffusers' spatial VAE tiling; read as false from recipes older than the field (they decoded untiled). */
  vae_tiling: boolean;
  loras: RecipeLora[];
  video: { format: VideoFormatName; crf: number; lossless: boolean };
}

export interface RecipeSource {
  params: RenderParams;
  size: { height: number; width: number };
  format: VideoFormatName;
  /** keyframes: in time order, by digest (the submission has hashed them already). */
  images: {
    start: Uint8Array | null;
    end: Uint8Array | null;
    video?: Uint8Array | null;
    keyframes?: { time: number; sha256: string }[];
  };
  bundle: { name: string; digest: string };
  framefarmVersion: string;
}

export const sha256Hex = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex");

/**
 * A string field of the render parameters that this code base may not have yet (the sampler and
 * step cache arrive with their own work): read defensively, with the default the renders use.
 */
export function paramName(params: object, key: string, fallback: string): string {
  const v = (params as Record<string, unknown>)[key];
  return typeof v === "string" && v !== "" ? v : fallback;
}

/** The recipe of a validated render, its fields in a fixed order (the same job gives the same bytes). */
export function makeRecipe(src: RecipeSource): Recipe {
  const p = src.params;
  return {
    format: RECIPE_FORMAT,
    version: RECIPE_VERSION,
    framefarm_version: src.framefarmVersion,
    bundle: { name: src.bundle.name, digest: src.bundle.digest },
    images: {
      start_sha256: src.images.start === null ? null : sha256Hex(src.images.start),
      end_sha256: src.images.end === null ? null : sha256Hex(src.images.end),
      ...(src.images.video !== undefined && src.images.video !== null
        ? { video_sha256: sha256Hex(src.images.video) }
        : {}),
      ...(src.images.keyframes !== undefined && src.images.keyframes.length > 0
        ? { keyframes: src.images.keyframes.map((k) => ({ time_seconds: k.time, sha256: k.sha256 })) }
        : {}),
    },
    prompt: p.prompt,
    negative_prompt: p.negativePrompt,
    seed: p.seed.toString(),
    sampler: p.sampler,
    unipc_variant: p.sampler === "unipc" ? p.unipcVariant : null,
    cfg_rescale: p.cfgRescale,
    section_prompts: p.sectionPrompts,
    prompt_blend_sections: p.promptBlendSections,
    cache: paramName(p, "cache", DEFAULT_CACHE),
    ...(skipsSteps(p.cache) ? { cache_threshold: p.cacheThreshold } : {}),
    ...(p.cache === "magcache" ? { magcache_k: p.magcacheK, magcache_retention: p.magcacheRetention } : {}),
    ...(p.video !== null ? { context_frames: p.video.contextFrames } : {}),
    steps: p.steps,
    guidance_scale: p.guidanceScale,
    true_cfg_scale: p.trueCfgScale,
    latent_window_size: p.latentWindowSize,
    mode: p.samplingType,
    num_frames: p.numFrames,
    resolution: "resolution" in p.size ? p.size.resolution : null,
    height: src.size.height,
    width: src.size.width,
    fps: p.fps,
    vae_tiling: p.vaeTiling,
    loras: (p.loras ?? []).map((l) => ({ name: l.name, sha256: l.sha256, weight: l.weight })),
    video: { format: src.format, crf: p.crf, lossless: p.lossless },
  };
}

/** The recipe as stored and embedded: indented JSON with a final newline. */
export const recipeText = (r: Recipe): string => `${JSON.stringify(r, null, 2)}\n`;

const bad = (message: string): FarmError => new FarmError("INVALID_ARGUMENT", `recipe: ${message}`);

type Json = Record<string, unknown>;

function object(v: unknown, path: string, keys: readonly string[], optional: readonly string[] = []): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad(`${path} must be an object`);
  const o = v as Json;
  for (const k of Object.keys(o))
    if (!keys.includes(k) && !optional.includes(k))
      throw bad(
        `unknown field ${path === "" ? k : `${path}.${k}`} (this framefarm reads recipe version ${RECIPE_VERSION})`,
      );
  for (const k of keys) if (!(k in o)) throw bad(`field ${path === "" ? k : `${path}.${k}`} is missing`);
  return o;
}

function str(o: Json, key: string, path = ""): string {
  const v = o[key];
  if (typeof v !== "string") throw bad(`${path}${key} must be a string`);
  return v;
}

function strOrNull(o: Json, key: string, path = ""): string | null {
  return o[key] === null ? null : str(o, key, path);
}

function num(o: Json, key: string, path = "", integer = false): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v)))
    throw bad(`${path}${key} must be ${integer ? "an integer" : "a number"}`);
  return v;
}

function matching(value: string, pattern: RegExp, what: string): string {
  if (!pattern.test(value)) throw bad(`${what} ${JSON.stringify(value)} is not of the form ${pattern.source}`);
  return value;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const SHA256 = /^[0-9a-f]{64}$/;
const TOP_KEYS = [
  "format",
  "version",
  "framefarm_version",
  "bundle",
  "images",
  "prompt",
  "negative_prompt",
  "seed",
  "sampler",
  "unipc_variant",
  "cfg_rescale",
  "section_prompts",
  "prompt_blend_sections",
  "cache",
  "steps",
  "guidance_scale",
  "true_cfg_scale",
  "latent_window_size",
  "mode",
  "num_frames",
  "resolution",
  "height",
  "width",
  "fps",
  "loras",
  "video",
] as const;

function sectionPromptsOf(v: unknown): string[] | null {
  if (v === null) return null;
  if (!Array.isArray(v) || v.some((p) => typeof p !== "string"))
    throw bad("section_prompts must be null or an array of strings");
  return v as string[];
}

function keyframesOf(v: unknown): RecipeKeyframe[] {
  if (!Array.isArray(v)) throw bad("images.keyframes must be an array");
  return v.map((k, i) => {
    const path = `images.keyframes[${i}]`;
    const e = object(k, path, ["time_seconds", "sha256"]);
    return {
      time_seconds: num(e, "time_seconds", `${path}.`),
      sha256: matching(str(e, "sha256", `${path}.`), SHA256, `${path}.sha256`),
    };
  });
}

/** Reads a recipe's JSON text, refusing anything this version does not understand exactly. */
export function parseRecipe(text: string): Recipe {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw bad(`not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad("must be a JSON object");
  const top = raw as Json;
  // Format and version first: a newer recipe gets "unsupported version", not "unknown field".
  if (top["format"] !== RECIPE_FORMAT)
    throw bad(`format must be ${JSON.stringify(RECIPE_FORMAT)}, got ${JSON.stringify(top["format"])}`);
  if (top["version"] !== RECIPE_VERSION)
    throw bad(
      `version ${JSON.stringify(top["version"])} is not supported: this framefarm reads version ${RECIPE_VERSION}`,
    );
  const o = object(raw, "", TOP_KEYS, [
    "cache_threshold",
    "magcache_k",
    "magcache_retention",
    "context_frames",
    "vae_tiling",
  ]);
  const bundle = object(o["bundle"], "bundle", ["name", "digest"]);
  const images = object(o["images"], "images", ["start_sha256", "end_sha256"], ["video_sha256", "keyframes"]);
  const video = object(o["video"], "video", ["format", "crf", "lossless"]);
  const mode = str(o, "mode");
  if (!(SAMPLING_TYPES as readonly string[]).includes(mode))
    throw bad(`mode must be one of ${SAMPLING_TYPES.join(", ")}, got ${JSON.stringify(mode)}`);
  const format = str(video, "format", "video.");
  if (!(VIDEO_FORMATS as readonly string[]).includes(format))
    throw bad(`video.format must be one of ${VIDEO_FORMATS.join(", ")}, got ${JSON.stringify(format)}`);
  if (typeof video["lossless"] !== "boolean") throw bad("video.lossless must be true or false");
  if (o["vae_tiling"] !== undefined && typeof o["vae_tiling"] !== "boolean")
    throw bad("vae_tiling must be true or false");
  if (!Array.isArray(o["loras"])) throw bad("loras must be an array");
  const loras = (o["loras"] as unknown[]).map((l, i) => {
    const e = object(l, `loras[${i}]`, ["name", "sha256", "weight"]);
    const sha256 = str(e, "sha256", `loras[${i}].`);
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw bad(`loras[${i}].sha256 must be 64 lowercase hex digits`);
    return { name: str(e, "name", `loras[${i}].`), sha256, weight: num(e, "weight", `loras[${i}].`) };
  });
  const end = strOrNull(images, "end_sha256", "images.");
  const start = strOrNull(images, "start_sha256", "images.");
  const videoSha = images["video_sha256"] === undefined ? null : str(images, "video_sha256", "images.");
  if ((start === null) === (videoSha === null))
    throw bad("images must name a start image (start_sha256) or a video (video_sha256), not both or neither");
  if ((videoSha === null) !== (o["context_frames"] === undefined))
    throw bad("context_frames goes with images.video_sha256 (a recipe extending a video) and only with it");
  const keyframes = images["keyframes"] === undefined ? undefined : keyframesOf(images["keyframes"]);
  return {
    format: RECIPE_FORMAT,
    version: RECIPE_VERSION,
    framefarm_version: str(o, "framefarm_version"),
    bundle: {
      name: str(bundle, "name", "bundle."),
      digest: matching(str(bundle, "digest", "bundle."), DIGEST, "bundle.digest"),
    },
    images: {
      start_sha256: start === null ? null : matching(start, SHA256, "images.start_sha256"),
      end_sha256: end === null ? null : matching(end, SHA256, "images.end_sha256"),
      ...(videoSha !== null ? { video_sha256: matching(videoSha, SHA256, "images.video_sha256") } : {}),
      ...(keyframes !== undefined ? { keyframes } : {}),
    },
    prompt: str(o, "prompt"),
    negative_prompt: strOrNull(o, "negative_prompt"),
    seed: matching(str(o, "seed"), /^\d{1,20}$/, "seed"),
    sampler: str(o, "sampler"),
    unipc_variant: strOrNull(o, "unipc_variant"),
    cfg_rescale: num(o, "cfg_rescale"),
    section_prompts: sectionPromptsOf(o["section_prompts"]),
    prompt_blend_sections: num(o, "prompt_blend_sections", "", true),
    cache: str(o, "cache"),
    ...(o["cache_threshold"] !== undefined ? { cache_threshold: num(o, "cache_threshold") } : {}),
    ...(o["magcache_k"] !== undefined ? { magcache_k: num(o, "magcache_k", "", true) } : {}),
    ...(o["magcache_retention"] !== undefined ? { magcache_retention: num(o, "magcache_retention") } : {}),
    ...(o["context_frames"] !== undefined ? { context_frames: num(o, "context_frames", "", true) } : {}),
    steps: num(o, "steps", "", true),
    guidance_scale: num(o, "guidance_scale"),
    true_cfg_scale: num(o, "true_cfg_scale"),
    latent_window_size: num(o, "latent_window_size", "", true),
    mode: mode as SamplingType,
    num_frames: num(o, "num_frames", "", true),
    resolution: o["resolution"] === null ? null : num(o, "resolution", "", true),
    height: num(o, "height", "", true),
    width: num(o, "width", "", true),
    fps: num(o, "fps"),
    vae_tiling: o["vae_tiling"] === true,
    loras,
    video: { format: format as VideoFormatName, crf: num(video, "crf", "video.", true), lossless: video["lossless"] },
  };
}

/** The size the job would render at must be the recipe's (it is, for the recipe's image and bundle). */
export function checkRecipeSize(recipe: Recipe, size: { height: number; width: number }): void {
  if (size.height !== recipe.height || size.width !== recipe.width) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `the recipe renders at ${recipe.width}x${recipe.height} but this farm would render it at ${size.width}x${size.height}`,
    );
  }
}

/** A recipe extending a video needs the video, one from an image needs no video (checked first: they set other parameters). */
export function checkRecipeStart(recipe: Recipe, videoGiven: boolean): void {
  const wantVideo = recipe.images.video_sha256 !== undefined;
  if (wantVideo && !videoGiven)
    throw new FarmError("INVALID_ARGUMENT", "the recipe extends a video: give the same video again (--video)");
  if (!wantVideo && videoGiven)
    throw new FarmError("INVALID_ARGUMENT", "the recipe starts from an image, not a video: give its image (--image)");
}

/**
 * The recipe's images (or video) against the ones given: INVALID_ARGUMENT naming the input and both
 * digests, or the input that is missing or too many. Keyframes (by digest, in time order) must be
 * the recipe's, at the recipe's times.
 */
export function checkRecipeImages(
  recipe: Recipe,
  start: Uint8Array | null,
  end: Uint8Array | null,
  keyframes: readonly { time: number; sha256: string }[] = [],
  video: Uint8Array | null = null,
): void {
  const want = recipe.images;
  const given = { start, end };
  const wantVideo = want.video_sha256 ?? null;
  checkRecipeStart(recipe, video !== null);
  if (want.end_sha256 !== null && given.end === null)
    throw new FarmError("INVALID_ARGUMENT", "the recipe was rendered with an end image: give the same end image again");
  if (want.end_sha256 === null && given.end !== null)
    throw new FarmError("INVALID_ARGUMENT", "the recipe was rendered without an end image: give none");
  const check = (what: string, bytes: Uint8Array, expected: string): void => {
    const got = sha256Hex(bytes);
    if (got !== expected)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `the ${what} is not the recipe's: its SHA-256 is ${got}, the recipe's is ${expected}; give the ${what} the recipe was rendered from`,
      );
  };
  if (video !== null && wantVideo !== null) check("video", video, wantVideo);
  else if (given.start === null || want.start_sha256 === null)
    throw new FarmError("INVALID_ARGUMENT", "the recipe starts from an image: give the same image again");
  else check("image", given.start, want.start_sha256);
  if (given.end !== null && want.end_sha256 !== null) check("end image", given.end, want.end_sha256);
  const wanted = want.keyframes ?? [];
  const times = (ks: readonly number[]): string => ks.map((t) => `${t}s`).join(", ");
  if (keyframes.length !== wanted.length)
    throw new FarmError(
      "INVALID_ARGUMENT",
      wanted.length === 0
        ? "the recipe was rendered without keyframes: give none"
        : `the recipe was rendered with ${wanted.length} keyframe${wanted.length === 1 ? "" : "s"} (at ${times(wanted.map((k) => k.time_seconds))}), ${keyframes.length} given: give the same keyframes again`,
    );
  wanted.forEach((w, i) => {
    const k = keyframes[i]!;
    if (k.time !== w.time_seconds)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `keyframe ${i + 1} is at ${k.time}s; the recipe's is at ${w.time_seconds}s`,
      );
    if (k.sha256 !== w.sha256)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `keyframe ${i + 1}'s image is not the recipe's: its SHA-256 is ${k.sha256}, the recipe's is ${w.sha256}; give the image the recipe was rendered from`,
      );
  });
}
