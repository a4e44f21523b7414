/**
 * "Same settings, new seed": a job's submission again, built from its record (every setting as
 * GetJob shows it) and its stored input images (or the video it extends), with another seed. The result goes through
 * SubmitJob's checks like any other submission.
 */
import { randomInt } from "node:crypto";
import { FarmError } from "../../shared/errors.js";
import type { RenderSettings, SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { jobKeys } from "../../shared/farm/keys.js";
import type { JobRecord } from "../dispatch/job-record.js";
import { settingsOf } from "./job-mapping.js";

/** A seed a person can read back and type: 32 bits are plenty of variety for a new take. */
export const randomSeed = (): bigint => BigInt(randomInt(0, 2 ** 32 - 1));

async function storedImage(store: ObjectStore, key: string, r: JobRecord, what = "images"): Promise<Buffer> {
  try {
    const bytes = await store.get(key);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  } catch (err) {
    // A cancelled job keeps nothing, its images included.
    if (err instanceof FarmError && err.status === "NOT_FOUND")
      throw new FarmError(
        "FAILED_PRECONDITION",
        `job ${r.spec.jobId} (${r.state}) no longer has its input ${what}; submit ${what === "images" ? "them" : "it"} again`,
        { cause: err },
      );
    throw err;
  }
}

/**
 * The size as the job asked for it: its bucket resolution when it had one. The bucket's exact
 * size may be one no request may name (at resolution 64 a bucket can be 48 pixels high).
 */
function sameSize(s: RenderSettings, r: JobRecord): RenderSettings {
  if (r.spec.resolution === undefined) return s;
  const { height: _height, width: _width, ...rest } = s;
  return { ...rest, resolution: r.spec.resolution };
}

export async function resubmitRequest(r: JobRecord, store: ObjectStore, seed?: bigint): Promise<SubmitJobRequest> {
  const keys = jobKeys(r.spec.jobId);
  // A job extending a video has the video where others have their start image.
  const extended = (r.spec.params.video ?? null) !== null;
  const start = extended
    ? await storedImage(store, keys.inputVideo, r, "video")
    : await storedImage(store, keys.firstImage, r);
  const endImage = r.spec.params.hasEndImage ? await storedImage(store, keys.lastImage, r) : undefined;
  const keyframes = [];
  for (const [i, timeSeconds] of (r.spec.params.keyframeTimes ?? []).entries())
    keyframes.push({
      timeSeconds,
      image: { source: { $case: "data" as const, value: await storedImage(store, keys.keyframeImage(i), r) } },
    });
  return {
    ...(extended
      ? { video: { source: { $case: "data", value: start } } }
      : { image: { source: { $case: "data", value: start } } }),
    ...(endImage !== undefined ? { endImage: { source: { $case: "data", value: endImage } } } : {}),
    keyframes,
    settings: { ...sameSize(settingsOf(r), r), seed: seed ?? randomSeed() },
    bundle: "",
    priority: r.priority ?? 0,
    idempotencyKey: "",
  };
}
