/**
 * What a submission may ask of this farm, for a form to offer (the submit page): the sampling
 * modes, samplers, step caches and video formats its bundle runs, VAE tiling, each setting's
 * default and its limits. Values are the proto JSON names a SubmitJobRequest carries, and everything comes from
 * the constants the checks themselves use (render-params.ts, the bundle's manifest), so a form
 * offers what the farm accepts and nothing it refuses.
 */
import {
  samplerToJSON,
  samplingModeToJSON,
  unipcVariantToJSON,
  videoFormatToJSON,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { SAMPLING_TYPES, type BundleManifest, type SamplingType } from "../../shared/bundle/manifest.js";
import {
  CACHES,
  DEFAULT_MAGCACHE_K,
  DEFAULT_MAGCACHE_RETENTION,
  LIMITS,
  RENDER_DEFAULTS,
  SAMPLERS,
  defaultCacheThreshold,
  type CacheName,
  type SamplerName,
} from "../../shared/job/render-params.js";
import { DEFAULT_UNIPC_VARIANT, UNIPC_VARIANTS, type UniPCVariant } from "../../shared/sampler/unipc.js";
import { VIDEO_FORMATS, type VideoFormatName } from "../../shared/job/recipe.js";
import { DEFAULT_IMAGE_LIMITS } from "../../shared/image/decode.js";
import { DEFAULT_VIDEO_LIMITS } from "../../shared/video/video-input.js";
import {
  DEFAULT_CONTEXT_FRAMES,
  MAX_CONTEXT_FRAMES,
  MIN_CONTEXT_FRAMES,
} from "../../shared/framepack/video-context.js";
import { MAX_BUCKET_RESOLUTION, MIN_BUCKET_RESOLUTION } from "../../shared/framepack/buckets.js";
import { MAX_LORA_WEIGHT, MAX_LORAS } from "../../shared/job/loras.js";
import { loraTargetsOf } from "../../shared/lora/lora-file.js";
import { MAX_REQUEST_BYTES } from "./server.js";
import { samplerToPb, samplingModeOf, unipcVariantToPb, videoFormatToPb } from "./job-mapping.js";

/** One choice of a setting: the value to send, and words for a person. */
export interface Choice<Name extends string> {
  /** What the request carries (a proto enum's JSON name, or the name itself for strings). */
  value: string;
  name: Name;
  label: string;
  isDefault: boolean;
}

export interface SubmitOptions {
  bundle: string;
  modes: (Choice<SamplingType> & { endImage: boolean; keyframes: boolean })[];
  samplers: Choice<SamplerName>[];
  unipcVariants: Choice<UniPCVariant>[];
  caches: (Choice<CacheName> & { threshold: number | null })[];
  formats: Choice<VideoFormatName>[];
  /**
   * LoRAs (SubmitJobRequest.loras), or null when the bundle cannot take them (no lora_targets in
   * its manifest, or quantized transformer weights): at most maxLoras, weights within +-maxWeight,
   * inline files within the request's maxRequestBytes (all files and images together).
   */
  loras: { maxLoras: number; maxWeight: number; defaultWeight: number; maxRequestBytes: number } | null;
  /** A checkbox: RenderSettings.vaeTiling, with words saying what it trades. */
  vaeTiling: { label: string; help: string; isDefault: boolean };
  defaults: {
    steps: number;
    guidanceScale: number;
    trueCfgScale: number;
    /** A decimal string: seeds are 64-bit. */
    seed: string;
    resolution: number;
    fps: number;
    crf: number;
    latentWindowSize: number;
    cfgRescale: number;
    magcacheK: number;
    magcacheRetention: number;
    /** Extending a video: Studio's context frames. */
    contextFrames: number;
  };
  limits: Omit<typeof LIMITS, "minResolution" | "maxResolution"> & {
    minResolution: number;
    maxResolution: number;
    maxImageBytes: number;
    maxVideoBytes: number;
    minContextFrames: number;
    maxContextFrames: number;
  };
}

const MODE_LABELS: Record<SamplingType, string> = {
  inverted_anti_drifting: "inverted (anti-drifting, FramePack I2V)",
  vanilla: "vanilla (FramePack-F1, forward)",
};
const SAMPLER_LABELS: Record<SamplerName, string> = {
  flow_match_euler: "FlowMatch Euler (diffusers)",
  unipc: "UniPC (lllyasviel's demo)",
};
const CACHE_LABELS: Record<CacheName, string> = {
  none: "none (every step)",
  teacache: "TeaCache",
  magcache: "MagCache",
};

/** The step caches a bundle can run: TeaCache and MagCache need its step-cache graphs. */
export const cachesOf = (manifest: BundleManifest): CacheName[] =>
  CACHES.filter((c) => c === "none" || manifest.components.transformer_residual !== undefined);

/** Whether the bundle takes LoRAs: what checkLoras asks of it (loraTargetsOf throws when it cannot). */
function takesLoras(manifest: BundleManifest): boolean {
  try {
    loraTargetsOf(manifest);
    return true;
  } catch {
    return false;
  }
}

export function submitOptions(manifest: BundleManifest, bundleName: string): SubmitOptions {
  return {
    bundle: bundleName,
    modes: SAMPLING_TYPES.map((t) => ({
      value: samplingModeToJSON(samplingModeOf(t)),
      name: t,
      label: MODE_LABELS[t],
      isDefault: t === manifest.sampling_type,
      // validateRenderParams refuses an end image and keyframes with vanilla sampling.
      endImage: t !== "vanilla",
      keyframes: t !== "vanilla",
    })),
    samplers: SAMPLERS.map((s) => ({
      value: samplerToJSON(samplerToPb(s)),
      name: s,
      label: SAMPLER_LABELS[s],
      isDefault: s === "flow_match_euler",
    })),
    unipcVariants: UNIPC_VARIANTS.map((v) => ({
      value: unipcVariantToJSON(unipcVariantToPb(v)),
      name: v,
      label: v,
      isDefault: v === DEFAULT_UNIPC_VARIANT,
    })),
    caches: cachesOf(manifest).map((c) => ({
      value: c,
      name: c,
      label: CACHE_LABELS[c],
      isDefault: c === "none",
      threshold: c === "none" ? null : defaultCacheThreshold(c),
    })),
    formats: VIDEO_FORMATS.map((f) => ({
      value: videoFormatToJSON(videoFormatToPb(f)),
      name: f,
      label: f === "mp4" ? "MP4 (H.264)" : "WebM (VP9)",
      isDefault: f === "mp4",
    })),
    loras: takesLoras(manifest)
      ? { maxLoras: MAX_LORAS, maxWeight: MAX_LORA_WEIGHT, defaultWeight: 1, maxRequestBytes: MAX_REQUEST_BYTES }
      : null,
    vaeTiling: {
      label: "VAE tiling",
      help: "decode in 256-pixel tiles as diffusers' vae.enable_tiling() does: lower peak GPU memory, slightly different frames; only sizes above 256 pixels are tiled",
      // validateRenderParams' default: diffusers' pipeline does not tile.
      isDefault: false,
    },
    defaults: {
      steps: RENDER_DEFAULTS.steps,
      guidanceScale: RENDER_DEFAULTS.guidanceScale,
      trueCfgScale: RENDER_DEFAULTS.trueCfgScale,
      seed: String(RENDER_DEFAULTS.seed),
      resolution: RENDER_DEFAULTS.resolution,
      fps: RENDER_DEFAULTS.fps,
      crf: RENDER_DEFAULTS.crf,
      latentWindowSize: manifest.framepack.default_latent_window_size,
      cfgRescale: 0,
      magcacheK: DEFAULT_MAGCACHE_K,
      magcacheRetention: DEFAULT_MAGCACHE_RETENTION,
      contextFrames: DEFAULT_CONTEXT_FRAMES,
    },
    limits: {
      ...LIMITS,
      minResolution: Math.max(LIMITS.minResolution, MIN_BUCKET_RESOLUTION),
      maxResolution: Math.min(LIMITS.maxResolution, MAX_BUCKET_RESOLUTION),
      maxImageBytes: DEFAULT_IMAGE_LIMITS.maxBytes,
      maxVideoBytes: DEFAULT_VIDEO_LIMITS.maxBytes,
      minContextFrames: MIN_CONTEXT_FRAMES,
      maxContextFrames: MAX_CONTEXT_FRAMES,
    },
  };
}
