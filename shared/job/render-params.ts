/**
 * What a user asks for: the validated, normalised parameters of one render. The CLI and the gRPC
 * API both build these, so every entry point rejects the same bad input with the same message.
 */
import { FarmError } from "../errors.js";
import { SAMPLING_TYPES, type SamplingType } from "../bundle/manifest.js";
import { DEFAULT_UNIPC_VARIANT, UNIPC_VARIANTS, type UniPCVariant } from "../sampler/unipc.js";
import { parseTimedPrompt, type PromptSegment } from "./timed-prompts.js";
import {
  DEFAULT_CONTEXT_FRAMES,
  MAX_CONTEXT_FRAMES,
  MIN_CONTEXT_FRAMES,
  encodedFrames,
  minVideoLatents,
  videoLatentFrames,
} from "../framepack/video-context.js";
import { parseKeyframeTimes } from "./keyframes.js";
import { parseLoraRefs, type LoraRef } from "./loras.js";

/**
 * flow_match_euler: diffusers' HunyuanVideoFramepackPipeline (FlowMatch Euler, the bundle's
 * scheduler). unipc: lllyasviel's FramePack demo (flux time shift + UniPC, its generator use,
 * section count and frame conversion); see README "Sampling as lllyasviel's demo does".
 */
export type SamplerName = "flow_match_euler" | "unipc";
/**
 * A step cache: none, lllyasviel's TeaCache (gpu-node/stages/teacache.ts) or Zehong Ma's MagCache
 * as FramePack-Studio runs it (gpu-node/stages/magcache.ts).
 */
export type CacheName = "none" | "teacache" | "magcache";
export const CACHES: readonly CacheName[] = ["none", "teacache", "magcache"];
/** lllyasviel's initialize_teacache default rel_l1_thresh. */
export const DEFAULT_CACHE_THRESHOLD = 0.15;
/** FramePack-Studio's MagCache defaults: threshold 0.1, max consecutive skips 2, retention ratio 0.25. */
export const DEFAULT_MAGCACHE_THRESHOLD = 0.1;
export const DEFAULT_MAGCACHE_K = 2;
export const DEFAULT_MAGCACHE_RETENTION = 0.25;
/** The threshold a cache uses when none is given. */
export const defaultCacheThreshold = (cache: CacheName): number =>
  cache === "magcache" ? DEFAULT_MAGCACHE_THRESHOLD : DEFAULT_CACHE_THRESHOLD;
/** Does this cache skip transformer steps (over the step-cache graphs)? */
export const skipsSteps = (cache: string | null | undefined): cache is "teacache" | "magcache" =>
  cache === "teacache" || cache === "magcache";
export const SAMPLERS: readonly SamplerName[] = ["flow_match_euler", "unipc"];

/** Upper bounds that keep one job from monopolising the farm; generous for real use. */
export const LIMITS = {
  maxSeconds: 120,
  maxFrames: 120 * 60,
  maxSteps: 200,
  maxGuidance: 100,
  maxTrueCfg: 50,
  maxLatentWindow: 33,
  minResolution: 64,
  maxResolution: 1280,
  maxPromptBytes: 16 * 1024,
  maxFps: 120,
  maxPromptBlendSections: 32,
  maxSectionPrompts: 1024,
} as const;

/**
 * What a render gets for a setting it leaves out (FramePack demo's values; the latent window and
 * mode come from the bundle, RenderDefaults). Exported so that a form can start from them.
 */
export const RENDER_DEFAULTS = {
  steps: 25,
  guidanceScale: 10,
  trueCfgScale: 1,
  /** FramePack demo's default seed. */
  seed: 31337n,
  resolution: 640,
  fps: 30,
  crf: 16,
} as const;

export interface RenderParams {
  prompt: string;
  /** Used only when trueCfgScale > 1 (true CFG), as in diffusers. */
  negativePrompt: string | null;
  numFrames: number;
  samplingType: SamplingType;
  steps: number;
  guidanceScale: number;
  trueCfgScale: number;
  /** torch.Generator seeds are unsigned 64-bit. */
  seed: bigint;
  latentWindowSize: number;
  /** Either an explicit size (both set) or a bucket resolution applied to the input image's aspect. */
  size: { height: number; width: number } | { resolution: number };
  fps: number;
  crf: number;
  /** Lossless RGB video (exact frames, for verification) instead of crf-compressed yuv420p. */
  lossless: boolean;
  hasEndImage: boolean;
  /**
   * Seconds of the keyframes (FramePack-eichi's section keyframe images, keyframes.ts), strictly
   * increasing; their images travel beside the parameters, as the end image does. [] for none.
   */
  keyframeTimes: number[];
  sampler: SamplerName;
  /** UniPC's B(h) variant (unipc only). */
  unipcVariant: UniPCVariant;
  /** fm_wrapper's CFG rescale (unipc only; 0 is off). */
  cfgRescale: number;
  /**
   * --cache: skip transformer blocks on steps whose input barely changed (teacache), whose
   * calibrated residual magnitude ratios stay near 1 (magcache), or not (none).
   */
  cache: CacheName;
  /** TeaCache's rel_l1_thresh or MagCache's error threshold, in (0, 1]; 0.15 (teacache) or 0.1 (magcache) unless given. */
  cacheThreshold: number;
  /** MagCache's K, the most consecutive skipped calls, an integer from 1 (2 unless given; magcache only). */
  magcacheK: number;
  /** MagCache's retention ratio in [0, 1]: the first ratio x steps of a section always compute (0.25 unless given). */
  magcacheRetention: number;
  /** A timed prompt ("[0s: ...] [2s: ...]") read against the video's length; null for a plain prompt. */
  promptSegments: PromptSegment[] | null;
  /** One prompt per section in video-time order (instead of `prompt`); null when not given. */
  sectionPrompts: string[] | null;
  /** Sections over which a prompt change is blended (0: switch at once). */
  promptBlendSections: number;
  /** LoRAs fused into the transformer, in order (loras.ts); [] for none. */
  loras: LoraRef[];
  /**
   * Extending a video (--video) instead of starting from an image: Studio's context frames and
   * the facts of the input (its decoded frame count and size); null for a start image.
   */
  video: VideoParams | null;
  /**
   * diffusers' spatial VAE tiling (vae.enable_tiling(): 256-pixel tiles blended over 64 pixels,
   * shared/framepack/vae-tiling.ts): lower peak decode memory, slightly different frames. A job
   * option, not a node setting, so a job's frames never depend on which node decoded a section.
   */
  vaeTiling: boolean;
}

export interface VideoParams {
  /** N, 2..10: the sections' 1x context holds N - 1 of the video's latents (Studio's slider). */
  contextFrames: number;
  /** Frames ffmpeg decodes from the input, and their size (before the bucket resize). */
  frames: number;
  width: number;
  height: number;
}

/** What inspecting an input video found (shared/video/video-input.ts), given to the validator. */
export interface InputVideoFacts {
  frames: number;
  width: number;
  height: number;
  /** Its average frame rate: the output's when fps is not given. */
  fps: number | null;
}

export interface RenderParamsInput {
  prompt?: unknown;
  negativePrompt?: unknown;
  seconds?: unknown;
  numFrames?: unknown;
  samplingType?: unknown;
  steps?: unknown;
  guidanceScale?: unknown;
  trueCfgScale?: unknown;
  seed?: unknown;
  latentWindowSize?: unknown;
  height?: unknown;
  width?: unknown;
  resolution?: unknown;
  fps?: unknown;
  crf?: unknown;
  lossless?: unknown;
  hasEndImage?: unknown;
  keyframeTimes?: unknown;
  sampler?: unknown;
  unipcVariant?: unknown;
  cfgRescale?: unknown;
  cache?: unknown;
  cacheThreshold?: unknown;
  magcacheK?: unknown;
  magcacheRetention?: unknown;
  sectionPrompts?: unknown;
  promptBlendSections?: unknown;
  loras?: unknown;
  contextFrames?: unknown;
  /** The input video's facts when the job extends one (not user input: the submission inspects it). */
  inputVideo?: InputVideoFacts | undefined;
  vaeTiling?: unknown;
}

export interface RenderDefaults {
  samplingType: SamplingType;
  latentWindowSize: number;
  /** The VAE's temporal compression (4 for HunyuanVideo): how many frames a latent spans. */
  temporalCompression?: number;
}

const bad = (message: string): FarmError => new FarmError("INVALID_ARGUMENT", message);

/** A value as a message shows it: JSON.stringify would print NaN and Infinity as "null" (and throw on bigint). */
const show = (v: unknown): string => (typeof v === "number" || typeof v === "bigint" ? String(v) : JSON.stringify(v));

function toNumber(name: string, v: unknown): number {
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n)) throw bad(`${name} must be a finite number, got ${show(v)}`);
  return n;
}

function intIn(name: string, v: unknown, min: number, max: number): number {
  const n = toNumber(name, v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw bad(`${name} must be an integer from ${min} to ${max}, got ${n}`);
  return n;
}

function numIn(name: string, v: unknown, min: number, max: number): number {
  const n = toNumber(name, v);
  if (n < min || n > max) throw bad(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** Text must be valid Unicode (no lone surrogates), without NUL, and of bounded size. */
export function checkText(name: string, v: unknown, allowEmpty: boolean): string {
  if (typeof v !== "string") throw bad(`${name} must be text`);
  if (!allowEmpty && v.trim() === "") throw bad(`${name} must not be empty`);
  if (v.includes("\0")) throw bad(`${name} must not contain NUL characters`);
  if (!v.isWellFormed()) throw bad(`${name} is not valid Unicode (lone surrogate)`);
  const bytes = Buffer.byteLength(v, "utf8");
  if (bytes > LIMITS.maxPromptBytes) {
    throw new FarmError("INVALID_ARGUMENT", `${name} is ${bytes} bytes; the limit is ${LIMITS.maxPromptBytes} bytes`);
  }
  return v;
}

/** The seed: torch.Generator seeds are unsigned 64-bit; absent, FramePack demo's 31337. */
export function parseSeed(v: unknown): bigint {
  if (v === undefined || v === null) return RENDER_DEFAULTS.seed;
  let s: bigint;
  try {
    if (typeof v === "bigint") s = v;
    else if (typeof v === "number" && Number.isSafeInteger(v)) s = BigInt(v);
    else if (typeof v === "string" && /^\d+$/.test(v.trim())) s = BigInt(v.trim());
    else throw new Error();
  } catch {
    throw bad(`seed must be a non-negative integer, got ${show(v)}`);
  }
  if (s < 0n || s >= 1n << 64n) throw bad(`seed must be from 0 to 2^64-1, got ${s}`);
  return s;
}

/** The latent window size (`--window`, latent_window_size): latent frames one section denoises. */
export const checkLatentWindowSize = (v: unknown): number => intIn("window", v, 1, LIMITS.maxLatentWindow);

/** The sampling mode by any of its names (inverted, inverted_anti_drifting, vanilla, f1). */
export function parseSamplingType(v: unknown, fallback: SamplingType): SamplingType {
  if (v === undefined || v === null) return fallback;
  const aliases: Record<string, SamplingType> = {
    inverted: "inverted_anti_drifting",
    inverted_anti_drifting: "inverted_anti_drifting",
    vanilla: "vanilla",
    f1: "vanilla",
  };
  const t = typeof v === "string" ? aliases[v.toLowerCase()] : undefined;
  if (t === undefined)
    throw bad(`mode must be one of inverted, vanilla (or ${SAMPLING_TYPES.join(", ")}), got ${JSON.stringify(v)}`);
  return t;
}

/** The sampler by any of its names (euler, flow_match_euler, unipc); absent, diffusers' FlowMatch Euler. */
export function parseSampler(v: unknown): SamplerName {
  if (v === undefined || v === null) return "flow_match_euler";
  const aliases: Record<string, SamplerName> = {
    euler: "flow_match_euler",
    flow_match_euler: "flow_match_euler",
    unipc: "unipc",
  };
  const t = typeof v === "string" ? aliases[v.toLowerCase()] : undefined;
  if (t === undefined)
    throw bad(`sampler must be euler (diffusers' FlowMatch Euler) or unipc (lllyasviel's UniPC), got ${show(v)}`);
  return t;
}

/** UniPC's variant (bh1, bh2), which only the unipc sampler has; absent, the demo's bh1. */
export function parseUnipcVariant(v: unknown, sampler: SamplerName): UniPCVariant {
  if (v === undefined || v === null) return DEFAULT_UNIPC_VARIANT;
  if (sampler !== "unipc") throw bad("a UniPC variant needs --sampler unipc");
  const t = typeof v === "string" ? v.toLowerCase() : v;
  if (!UNIPC_VARIANTS.includes(t as UniPCVariant)) throw bad(`UniPC variant must be bh1 or bh2, got ${show(v)}`);
  return t as UniPCVariant;
}

/** The step cache by name (none, teacache, magcache); absent or empty, none. */
export function parseCache(v: unknown): CacheName {
  if (v === undefined || v === null || v === "") return "none";
  const t = typeof v === "string" ? v.toLowerCase() : undefined;
  if (t === undefined || !CACHES.includes(t as CacheName))
    throw bad(`cache must be none, teacache (lllyasviel's TeaCache) or magcache (MagCache), got ${show(v)}`);
  return t as CacheName;
}

/** The cache's threshold: a number in (0, 1], only with --cache teacache or magcache; absent, the cache's default. */
export function parseCacheThreshold(v: unknown, cache: CacheName): number {
  if (v === undefined || v === null) return defaultCacheThreshold(cache);
  if (cache === "none") throw bad("a cache threshold needs --cache teacache or --cache magcache");
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n) || n <= 0 || n > 1)
    throw bad(`cache threshold must be greater than 0 and at most 1, got ${show(v)}`);
  return n;
}

/** MagCache's K (max consecutive skips): an integer from 1 to the step limit, only with --cache magcache; absent, 2. */
export function parseMagcacheK(v: unknown, cache: CacheName): number {
  if (v === undefined || v === null) return DEFAULT_MAGCACHE_K;
  if (cache !== "magcache") throw bad("MagCache's K (max consecutive skips) needs --cache magcache");
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > LIMITS.maxSteps)
    throw bad(`MagCache's K (max consecutive skips) must be an integer from 1 to ${LIMITS.maxSteps}, got ${show(v)}`);
  return n;
}

/** MagCache's retention ratio: a number in [0, 1] (Studio's slider), only with --cache magcache; absent, 0.25. */
export function parseMagcacheRetention(v: unknown, cache: CacheName): number {
  if (v === undefined || v === null) return DEFAULT_MAGCACHE_RETENTION;
  if (cache !== "magcache") throw bad("MagCache's retention ratio needs --cache magcache");
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0 || n > 1)
    throw bad(`MagCache's retention ratio must be from 0 to 1, got ${show(v)}`);
  return n;
}

/** One prompt per section, in video-time order; null when none are given. */
export function parseSectionPrompts(v: unknown): string[] | null {
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v)) throw bad("section prompts must be a list of texts");
  if (v.length === 0) return null;
  if (v.length > LIMITS.maxSectionPrompts)
    throw bad(`at most ${LIMITS.maxSectionPrompts} section prompts, got ${v.length}`);
  return v.map((p, i) => checkText(`section prompt ${i + 1}`, p, false));
}

/**
 * Spatial VAE tiling: true or false; absent, false (diffusers' pipeline does not tile). Anything
 * else is refused rather than read as truthy: "false" would otherwise tile.
 */
export function parseVaeTiling(v: unknown): boolean {
  if (v === undefined || v === null) return false;
  if (typeof v !== "boolean") throw bad(`vae tiling must be true or false, got ${show(v)}`);
  return v;
}

export function validateRenderParams(input: RenderParamsInput, defaults: RenderDefaults): RenderParams {
  const sectionPrompts = parseSectionPrompts(input.sectionPrompts);
  const prompt = checkText("prompt", input.prompt ?? "", sectionPrompts !== null);
  if (sectionPrompts !== null && prompt.trim() !== "") throw bad("give either a prompt or section prompts, not both");
  const negativePrompt =
    input.negativePrompt === undefined || input.negativePrompt === null
      ? null
      : checkText("negative prompt", input.negativePrompt, true);
  const inputVideo = input.inputVideo;
  // A video plays on at its own rate unless another is asked for (Studio writes the input's fps).
  if (input.fps === undefined && inputVideo !== undefined && inputVideo.fps !== null) {
    if (!(inputVideo.fps >= 1 && inputVideo.fps <= LIMITS.maxFps))
      throw bad(`the video's frame rate ${inputVideo.fps} is not between 1 and ${LIMITS.maxFps}: give fps`);
  }
  const fps = numIn("fps", input.fps ?? inputVideo?.fps ?? RENDER_DEFAULTS.fps, 1, LIMITS.maxFps);

  let numFrames: number;
  if (input.numFrames !== undefined && input.seconds !== undefined)
    throw bad("give either seconds or frames, not both");
  if (input.numFrames !== undefined) numFrames = intIn("frames", input.numFrames, 1, LIMITS.maxFrames);
  else if (input.seconds !== undefined) {
    const seconds = toNumber("seconds", input.seconds);
    if (seconds <= 0 || seconds > LIMITS.maxSeconds)
      throw bad(`seconds must be greater than 0 and at most ${LIMITS.maxSeconds}, got ${seconds}`);
    numFrames = Math.max(1, Math.round(seconds * fps));
    if (numFrames > LIMITS.maxFrames)
      throw bad(`${seconds} s at ${fps} fps is ${numFrames} frames; the limit is ${LIMITS.maxFrames}`);
  } else throw bad("the video length is missing: give seconds or frames");

  const samplingType = parseSamplingType(input.samplingType, defaults.samplingType);
  const hasEndImage = input.hasEndImage === true;
  if (hasEndImage && samplingType === "vanilla") {
    throw bad("an end image needs inverted (anti-drifting) sampling; vanilla (F1) sampling cannot use one");
  }

  let size: RenderParams["size"];
  const multipleOf16 = (name: string, v: unknown): number => {
    const n = intIn(name, v, LIMITS.minResolution, LIMITS.maxResolution * 2);
    if (n % 16 !== 0) throw bad(`${name} must be a multiple of 16, got ${n}`);
    return n;
  };
  if (input.height !== undefined || input.width !== undefined) {
    if (input.height === undefined || input.width === undefined) throw bad("give both height and width, or neither");
    if (input.resolution !== undefined) throw bad("give either height and width or a resolution, not both");
    size = { height: multipleOf16("height", input.height), width: multipleOf16("width", input.width) };
  } else {
    const r = intIn(
      "resolution",
      input.resolution ?? RENDER_DEFAULTS.resolution,
      LIMITS.minResolution,
      LIMITS.maxResolution,
    );
    if (r % 16 !== 0) throw bad(`resolution must be a multiple of 16, got ${r}`);
    size = { resolution: r };
  }

  const sampler = parseSampler(input.sampler);
  const unipcVariant = parseUnipcVariant(input.unipcVariant, sampler);
  const cfgRescale = numIn("cfg rescale", input.cfgRescale ?? 0, 0, 1);
  if (cfgRescale !== 0 && sampler !== "unipc")
    throw bad("cfg rescale needs --sampler unipc (diffusers' FramePack pipeline has none)");
  const cache = parseCache(input.cache);
  const cacheThreshold = parseCacheThreshold(input.cacheThreshold, cache);
  const magcacheK = parseMagcacheK(input.magcacheK, cache);
  const magcacheRetention = parseMagcacheRetention(input.magcacheRetention, cache);
  const promptBlendSections = intIn(
    "prompt blend sections",
    input.promptBlendSections ?? 0,
    0,
    LIMITS.maxPromptBlendSections,
  );
  const promptSegments = sectionPrompts === null ? parseTimedPrompt(prompt, numFrames / fps) : null;
  if (promptBlendSections > 0 && promptSegments === null && sectionPrompts === null)
    throw bad("prompt blending needs a timed prompt ([0s: ...] [2s: ...]) or section prompts");
  const latentWindowSize = checkLatentWindowSize(input.latentWindowSize ?? defaults.latentWindowSize);
  const video = videoParams(input, latentWindowSize, defaults.temporalCompression ?? 4);
  const keyframeTimes = parseKeyframeTimes(input.keyframeTimes, numFrames / fps, samplingType);
  if (video !== null && keyframeTimes.length > 0)
    throw bad("keyframes take the start image's place in the context; a video to extend has none: give no keyframes");

  return {
    prompt,
    negativePrompt,
    numFrames,
    samplingType,
    steps: intIn("steps", input.steps ?? RENDER_DEFAULTS.steps, 1, LIMITS.maxSteps),
    guidanceScale: numIn("guidance", input.guidanceScale ?? RENDER_DEFAULTS.guidanceScale, 0, LIMITS.maxGuidance),
    trueCfgScale: numIn("cfg", input.trueCfgScale ?? RENDER_DEFAULTS.trueCfgScale, 0, LIMITS.maxTrueCfg),
    seed: parseSeed(input.seed),
    latentWindowSize,
    size,
    fps,
    crf: intIn("crf", input.crf ?? RENDER_DEFAULTS.crf, 0, 51),
    lossless: input.lossless === true,
    hasEndImage,
    keyframeTimes,
    sampler,
    unipcVariant,
    cfgRescale,
    cache,
    cacheThreshold,
    magcacheK,
    magcacheRetention,
    promptSegments,
    sectionPrompts,
    promptBlendSections,
    loras: parseLoraRefs(input.loras),
    video,
    vaeTiling: parseVaeTiling(input.vaeTiling),
  };
}

/** Context frames and the input video's facts; a video too short for the context is refused. */
function videoParams(input: RenderParamsInput, window: number, tc: number): VideoParams | null {
  const v = input.inputVideo;
  if (v === undefined) {
    if (input.contextFrames !== undefined && input.contextFrames !== null)
      throw bad("context frames need a video to extend (--video)");
    return null;
  }
  const contextFrames = intIn(
    "context frames",
    input.contextFrames ?? DEFAULT_CONTEXT_FRAMES,
    MIN_CONTEXT_FRAMES,
    MAX_CONTEXT_FRAMES,
  );
  const need = minVideoLatents(contextFrames, window);
  if (videoLatentFrames(v.frames, window, tc) < need)
    throw bad(
      `the video has ${v.frames} frames, too short for the context: ${contextFrames} context frames with window ${window} need ${need} latent frames, its last ${encodedFrames(need, tc)} frames`,
    );
  return { contextFrames, frames: v.frames, width: v.width, height: v.height };
}

/**
 * diffusers: do_true_cfg = true_cfg_scale > 1 and a negative prompt was given. lllyasviel's demo
 * (unipc): any cfg other than 1 runs the negative prompt (empty when none is given).
 */
export const usesTrueCfg = (
  p: Pick<RenderParams, "trueCfgScale" | "negativePrompt"> & { sampler?: SamplerName },
): boolean => (p.sampler === "unipc" ? p.trueCfgScale !== 1 : p.trueCfgScale > 1 && p.negativePrompt !== null);
