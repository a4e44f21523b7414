/**
 * The one mapping between the gRPC messages of jobs.proto and the farm's own types: job states,
 * sampling modes, samplers, video formats and output options, render settings, timestamps and errors.
 */
import { status as GrpcStatus, type ServerErrorResponse } from "@grpc/grpc-js";
import { FarmError } from "../../shared/errors.js";
import {
  JobState as PbJobState,
  Sampler,
  SamplingMode,
  UnipcVariant,
  VideoFormat,
  type RenderSettings,
} from "../../proto/gen/framefarm/v1/jobs.js";
import type { Timestamp } from "../../proto/gen/google/protobuf/timestamp.js";
import type { SamplingType } from "../../shared/bundle/manifest.js";
import type { JobOutput } from "../../shared/job/job-spec.js";
import type { VideoFormatName } from "../../shared/job/recipe.js";
import type { RenderParamsInput, SamplerName } from "../../shared/job/render-params.js";
import type { UniPCVariant } from "../../shared/sampler/unipc.js";
import type { JobState } from "../../shared/farm/protocol.js";
import type { JobRecord } from "../dispatch/job-record.js";

const STATE_TO_PB: Record<JobState, PbJobState> = {
  QUEUED: PbJobState.JOB_STATE_QUEUED,
  RUNNING: PbJobState.JOB_STATE_RUNNING,
  SUCCEEDED: PbJobState.JOB_STATE_SUCCEEDED,
  FAILED: PbJobState.JOB_STATE_FAILED,
  CANCELLED: PbJobState.JOB_STATE_CANCELLED,
};

export const jobStateToPb = (s: JobState): PbJobState => STATE_TO_PB[s];

const MODE_OF: Record<SamplingType, SamplingMode> = {
  inverted_anti_drifting: SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
  vanilla: SamplingMode.SAMPLING_MODE_VANILLA,
};
export const samplingModeOf = (t: SamplingType): SamplingMode => MODE_OF[t];

/** The sampling type a request's mode asks for; undefined when unspecified (the bundle's default). */
export function samplingTypeOf(mode: SamplingMode): SamplingType | undefined {
  if (mode === SamplingMode.SAMPLING_MODE_UNSPECIFIED) return undefined;
  const hit = (Object.entries(MODE_OF) as [SamplingType, SamplingMode][]).find(([, m]) => m === mode);
  // proto3 enums are open: an unknown number decodes fine and would fall back to the default mode.
  if (hit === undefined)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `mode ${mode} is not a SamplingMode (0 unspecified, 1 inverted anti-drifting, 2 vanilla)`,
    );
  return hit[0];
}

const FORMATS: Partial<Record<number, VideoFormatName>> = {
  [VideoFormat.VIDEO_FORMAT_UNSPECIFIED]: "mp4",
  [VideoFormat.VIDEO_FORMAT_MP4]: "mp4",
  [VideoFormat.VIDEO_FORMAT_WEBM]: "webm",
};

export const videoFormatToPb = (f: VideoFormatName): VideoFormat =>
  f === "webm" ? VideoFormat.VIDEO_FORMAT_WEBM : VideoFormat.VIDEO_FORMAT_MP4;

/** What the mux writes besides the frames' video: its format, and the frames as PNGs or not. */
export function jobOutputOf(settings: RenderSettings): JobOutput {
  // proto3 enums are open: an unknown number decodes fine and must not fall back silently.
  const format = FORMATS[settings.format ?? VideoFormat.VIDEO_FORMAT_UNSPECIFIED];
  if (format === undefined)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `format ${settings.format} is not a VideoFormat (0 unspecified, 1 MP4, 2 WebM)`,
    );
  return { format, saveFrames: settings.saveFrames === true };
}

const SAMPLER_OF: Record<SamplerName, Sampler> = {
  flow_match_euler: Sampler.SAMPLER_FLOW_MATCH_EULER,
  unipc: Sampler.SAMPLER_UNIPC,
};
export const samplerToPb = (s: SamplerName): Sampler => SAMPLER_OF[s];

/** The sampler a request asks for; undefined when unspecified (FlowMatch Euler). */
export function samplerOf(sampler: Sampler | undefined): SamplerName | undefined {
  if (sampler === undefined || sampler === Sampler.SAMPLER_UNSPECIFIED) return undefined;
  const hit = (Object.entries(SAMPLER_OF) as [SamplerName, Sampler][]).find(([, s]) => s === sampler);
  if (hit === undefined)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `sampler ${sampler} is not a Sampler (0 unspecified, 1 flow-match Euler, 2 UniPC)`,
    );
  return hit[0];
}

const VARIANT_OF: Record<UniPCVariant, UnipcVariant> = {
  bh1: UnipcVariant.UNIPC_VARIANT_BH1,
  bh2: UnipcVariant.UNIPC_VARIANT_BH2,
};
export const unipcVariantToPb = (v: UniPCVariant): UnipcVariant => VARIANT_OF[v];

/** The UniPC variant a request asks for; undefined when unspecified (bh1). */
export function unipcVariantOf(variant: UnipcVariant | undefined): UniPCVariant | undefined {
  if (variant === undefined || variant === UnipcVariant.UNIPC_VARIANT_UNSPECIFIED) return undefined;
  const hit = (Object.entries(VARIANT_OF) as [UniPCVariant, UnipcVariant][]).find(([, v]) => v === variant);
  if (hit === undefined)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `unipc.variant ${variant} is not a UnipcVariant (0 unspecified, 1 bh1, 2 bh2)`,
    );
  return hit[0];
}

/**
 * A request's settings as render-params input (validated there, the one check of every parameter).
 * The images' part: whether there is an end image, and the keyframes' times (SubmitJobRequest.keyframes).
 */
export function renderParamsInputOf(
  s: RenderSettings,
  hasEndImage: boolean,
  keyframeTimes: readonly number[] = [],
): RenderParamsInput {
  return {
    prompt: s.prompt,
    negativePrompt: s.negativePrompt,
    ...(s.length?.$case === "seconds"
      ? { seconds: s.length.value }
      : s.length?.$case === "numFrames"
        ? { numFrames: s.length.value }
        : {}),
    samplingType: samplingTypeOf(s.mode),
    steps: s.steps,
    guidanceScale: s.guidanceScale,
    trueCfgScale: s.trueCfgScale,
    seed: s.seed,
    latentWindowSize: s.latentWindowSize,
    resolution: s.resolution,
    height: s.height,
    width: s.width,
    fps: s.fps,
    crf: s.crf,
    lossless: s.lossless,
    hasEndImage,
    keyframeTimes,
    sampler: samplerOf(s.sampler),
    unipcVariant: unipcVariantOf(s.unipc?.variant),
    cfgRescale: s.unipc?.cfgRescale,
    cache: s.cache,
    cacheThreshold: s.cacheThreshold,
    magcacheK: s.magcacheK,
    magcacheRetention: s.magcacheRetention,
    sectionPrompts: s.promptSchedule?.sectionPrompts,
    promptBlendSections: s.promptSchedule?.blendSections,
    contextFrames: s.contextFrames,
    vaeTiling: s.vaeTiling,
  };
}

export function settingsOf(r: JobRecord): RenderSettings {
  const p = r.spec.params;
  return {
    prompt: p.prompt,
    ...(p.negativePrompt !== null ? { negativePrompt: p.negativePrompt } : {}),
    length: { $case: "numFrames", value: p.numFrames },
    mode: samplingModeOf(p.samplingType),
    steps: p.steps,
    guidanceScale: p.guidanceScale,
    trueCfgScale: p.trueCfgScale,
    seed: BigInt(p.seed),
    latentWindowSize: p.latentWindowSize,
    height: r.spec.height,
    width: r.spec.width,
    fps: p.fps,
    crf: p.crf,
    lossless: p.lossless,
    format: videoFormatToPb(r.spec.output?.format ?? "mp4"),
    saveFrames: r.spec.output?.saveFrames ?? false,
    // Records from before samplers, prompt schedules and VAE tiling lack these fields.
    vaeTiling: p.vaeTiling === true,
    sampler: samplerToPb(p.sampler ?? "flow_match_euler"),
    ...(p.sampler === "unipc"
      ? { unipc: { variant: unipcVariantToPb(p.unipcVariant ?? "bh1"), cfgRescale: p.cfgRescale ?? 0 } }
      : {}),
    ...(p.cache === "teacache" ? { cache: p.cache, cacheThreshold: p.cacheThreshold } : {}),
    ...(p.cache === "magcache"
      ? {
          cache: p.cache,
          cacheThreshold: p.cacheThreshold,
          magcacheK: p.magcacheK,
          magcacheRetention: p.magcacheRetention,
        }
      : {}),
    ...((p.sectionPrompts ?? null) !== null || (p.promptBlendSections ?? 0) > 0
      ? {
          promptSchedule: {
            sectionPrompts: p.sectionPrompts ?? [],
            ...((p.promptBlendSections ?? 0) > 0 ? { blendSections: p.promptBlendSections } : {}),
          },
        }
      : {}),
    ...((p.video ?? null) !== null ? { contextFrames: p.video!.contextFrames } : {}),
  };
}

/** A FarmError (or anything else) as the gRPC error the client sees. */
export function toGrpcError(err: unknown): Partial<ServerErrorResponse> {
  if (err instanceof FarmError) return { code: err.code, details: err.message, message: err.message };
  return { code: GrpcStatus.INTERNAL, details: `internal error: ${(err as Error)?.message ?? String(err)}` };
}

export function timestamp(iso: string): Timestamp {
  const ms = Date.parse(iso);
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}
