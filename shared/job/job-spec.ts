/**
 * What every stage task of a job needs to know besides its own inputs: the validated render
 * parameters and the render size, in a JSON form that travels in queue messages and job records.
 */
import {
  DEFAULT_CACHE_THRESHOLD,
  DEFAULT_MAGCACHE_K,
  DEFAULT_MAGCACHE_RETENTION,
  type RenderParams,
} from "./render-params.js";
import type { VideoFormatName } from "./recipe.js";

/** What the mux writes: the video's format, and every frame as a PNG too or not. */
export interface JobOutput {
  format: VideoFormatName;
  saveFrames: boolean;
}

export interface JobSpec {
  jobId: string;
  params: Omit<RenderParams, "seed" | "size"> & { seed: string };
  height: number;
  width: number;
  /**
   * The bucket resolution height and width were chosen at, when the submission asked for one
   * (absent: an exact size, or a record older than this field); a job submitted again asks for it.
   */
  resolution?: number;
  /** Who submitted it (the API scopes every read to it); absent in records older than tenants. */
  tenant?: string;
  /** Absent in records older than video formats: an MP4 and no frames. */
  output?: JobOutput;
}

export function toJobSpec(
  jobId: string,
  params: RenderParams,
  size: { height: number; width: number },
  tenant?: string,
): JobSpec {
  const { seed, size: _size, ...rest } = params;
  return {
    jobId,
    params: { ...rest, seed: seed.toString() },
    height: size.height,
    width: size.width,
    ...("resolution" in params.size ? { resolution: params.size.resolution } : {}),
    ...(tenant !== undefined ? { tenant } : {}),
  };
}

/** Fields newer than some stored records, with the values those records were rendered with. */
const LATER_DEFAULTS = {
  sampler: "flow_match_euler",
  unipcVariant: "bh1",
  cfgRescale: 0,
  cache: "none",
  cacheThreshold: DEFAULT_CACHE_THRESHOLD,
  magcacheK: DEFAULT_MAGCACHE_K,
  magcacheRetention: DEFAULT_MAGCACHE_RETENTION,
  promptSegments: null,
  sectionPrompts: null,
  promptBlendSections: 0,
  video: null,
  keyframeTimes: [],
  vaeTiling: false,
} as const satisfies Partial<RenderParams>;

export function renderParamsOf(spec: JobSpec): RenderParams {
  return {
    ...LATER_DEFAULTS,
    ...spec.params,
    seed: BigInt(spec.params.seed),
    size: { height: spec.height, width: spec.width },
  };
}
