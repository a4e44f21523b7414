/**
 * SubmitJob: checks a submission (settings or a recipe to render again, images or a video to
 * extend, priority, idempotency key) before anything is stored, answers a repeated idempotency key with its first job, stores the inputs, plans the job
 * and hands it to the dispatcher. A submission that does not become a job leaves nothing behind.
 */
import { createHash, randomUUID } from "node:crypto";
import { FarmError } from "../../shared/errors.js";
import type { ImageInput, Job, SubmitJobRequest, VideoInput } from "../../proto/gen/framefarm/v1/jobs.js";
import type { KeyValue } from "../../shared/bus/bus.js";
import { validateObjectKey } from "../../shared/store/object-store.js";
import { decodeImage, DEFAULT_IMAGE_LIMITS, type DecodedImage } from "../../shared/image/decode.js";
import { inspectVideo, DEFAULT_VIDEO_LIMITS, type VideoInfo } from "../../shared/video/video-input.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { jobKeys, jobPrefix } from "../../shared/farm/keys.js";
import { planJob } from "../planner/job-plan.js";
import { checkPriority } from "../dispatch/dispatcher.js";
import { IDEMPOTENCY_BUCKET, readJobIncludingExpiring, readJob, type JobRecord } from "../dispatch/job-record.js";
import { tenantOf } from "../dispatch/job-views.js";
import { jobOutputOf, renderParamsInputOf } from "./job-mapping.js";
import { keyframeLabel } from "../../shared/job/keyframes.js";
import { cachesOf } from "./submit-options.js";
import { checkLoras, storeLoras } from "./job-loras.js";
import { checkRecipeParams, recipeParamsInput, recipeRequest } from "./recipe-request.js";
import {
  checkRecipeImages,
  checkRecipeSize,
  checkRecipeStart,
  makeRecipe,
  recipeText,
  sha256Hex,
} from "../../shared/job/recipe.js";
import { FRAMEFARM_VERSION } from "../../shared/version.js";
import type { JobServiceDeps } from "./job-service.js";
import type { TraceCarrier } from "../../shared/telemetry/tracing.js";

const IDEMPOTENCY_KEY = /^[A-Za-z0-9._:-]{1,128}$/;
export { IDEMPOTENCY_BUCKET };

export interface Submission extends JobServiceDeps {
  jobs: Promise<KeyValue>;
  idempotency: Promise<KeyValue>;
  toJob(r: JobRecord): Promise<Job>;
  /**
   * Admits a new job (not a repeated idempotency key) or throws (a per-tenant limit); the returned
   * release is called once the job is submitted or refused.
   */
  admit?: () => () => void;
  /** The SubmitJob span's trace context: the job record keeps it, every task's spans descend from it. */
  trace?: TraceCarrier;
}

/** An input image's (or video's) bytes: inline, or read from the tenant's uploads. */
async function imageBytes(
  deps: Submission,
  source: NonNullable<ImageInput["source"]>,
  what: string,
  tenant: string,
): Promise<Uint8Array> {
  if (source.$case === "data") return source.value;
  // A tenant reads only its own uploads; the key is checked as a whole, never joined to a path.
  const key = validateObjectKey(source.value);
  const prefix = `uploads/${tenant}/`;
  if (!key.startsWith(prefix))
    throw new FarmError("PERMISSION_DENIED", `${what} object key must be under ${prefix}, got ${JSON.stringify(key)}`);
  return deps.store.get(key);
}

async function image(
  deps: Submission,
  input: ImageInput | undefined,
  what: string,
  tenant: string,
): Promise<{ bytes: Uint8Array; decoded: DecodedImage } | null> {
  if (input?.source === undefined) return null;
  const bytes = await imageBytes(deps, input.source, what, tenant);
  return { bytes, decoded: await decodeImage(bytes, DEFAULT_IMAGE_LIMITS, what) };
}

/** A video to extend, inspected (shared/video/video-input.ts): its frames decide the render parameters. */
async function video(
  deps: Submission,
  input: VideoInput | undefined,
  tenant: string,
): Promise<{ bytes: Uint8Array; info: VideoInfo } | null> {
  if (input?.source === undefined) return null;
  const bytes = await imageBytes(deps, input.source, "video", tenant);
  return { bytes, info: await inspectVideo(bytes, DEFAULT_VIDEO_LIMITS, "video") };
}

/** A keyframe checked as `image` is: its time, where its image comes from and that image's SHA-256. */
interface CheckedKeyframe {
  time: number;
  source: NonNullable<ImageInput["source"]>;
  what: string;
  sha256: string;
}

/**
 * Every keyframe image decoded once to check it, then only its digest kept: there may be many, and
 * one is copied into the job's inputs only once all are good (an upload read again must still match).
 */
async function checkKeyframes(deps: Submission, req: SubmitJobRequest, tenant: string): Promise<CheckedKeyframe[]> {
  const out: CheckedKeyframe[] = [];
  for (const [i, k] of req.keyframes.entries()) {
    const what = keyframeLabel(i, k.timeSeconds);
    if (k.image?.source === undefined) throw new FarmError("INVALID_ARGUMENT", `${what} has no image`);
    const bytes = await imageBytes(deps, k.image.source, what, tenant);
    await decodeImage(bytes, DEFAULT_IMAGE_LIMITS, what);
    out.push({ time: k.timeSeconds, source: k.image.source, what, sha256: sha256Hex(bytes) });
  }
  return out;
}

async function storeKeyframes(
  deps: Submission,
  jobId: string,
  keyframes: readonly CheckedKeyframe[],
  tenant: string,
): Promise<void> {
  const keys = jobKeys(jobId);
  for (const [i, k] of keyframes.entries()) {
    const bytes = await imageBytes(deps, k.source, k.what, tenant);
    if (sha256Hex(bytes) !== k.sha256)
      throw new FarmError("ABORTED", `${k.what} changed while the job was submitted; submit it again`);
    await deps.store.put(keys.keyframeImage(i), bytes);
  }
}

/** A submission's webhook URL, as the farm's policy allows it (coordinator/webhooks/policy.ts). */
async function checkWebhook(deps: Submission, url: string): Promise<string> {
  if (deps.webhooks === undefined)
    throw new FarmError("FAILED_PRECONDITION", "this farm sends no webhooks (no --webhook-secret)");
  return deps.webhooks.check(url);
}

/**
 * signal: the caller went away (deadline or cancel). Checked until the job is handed to the
 * dispatcher; a submission aborted before that leaves nothing stored.
 */
export async function submitJob(
  deps: Submission,
  req: SubmitJobRequest,
  tenant: string,
  signal?: AbortSignal,
): Promise<{ job: Job; deduplicated: boolean }> {
  const { manifest } = deps;
  if (req.bundle !== "" && req.bundle !== deps.bundleName)
    throw new FarmError(
      "NOT_FOUND",
      `unknown bundle ${JSON.stringify(req.bundle)}; this farm serves ${JSON.stringify(deps.bundleName)}`,
    );
  // Also checked by the dispatcher; here so a bad one is refused before any image is decoded or stored.
  checkPriority(req.priority);
  if (req.idempotencyKey !== "" && !IDEMPOTENCY_KEY.test(req.idempotencyKey))
    throw new FarmError("INVALID_ARGUMENT", "idempotency key must be 1-128 characters of [A-Za-z0-9._:-]");
  // A recipe's settings replace the request's; its bundle must be this farm's.
  const fromRecipe = recipeRequest(req, { name: deps.bundleName, digest: deps.bundleDigest });
  const s = fromRecipe?.settings ?? req.settings;
  if (s === undefined) throw new FarmError("INVALID_ARGUMENT", "settings are missing");
  if (req.video?.source !== undefined && req.image?.source !== undefined)
    throw new FarmError("INVALID_ARGUMENT", "give a start image or a video to extend, not both");
  if (fromRecipe !== null) checkRecipeStart(fromRecipe.recipe, req.video?.source !== undefined);
  // A video's frame count and rate are render parameters' inputs, so it is read first.
  const extended = await video(deps, req.video, tenant);
  const input = {
    ...renderParamsInputOf(
      s,
      req.endImage?.source !== undefined,
      req.keyframes.map((k) => k.timeSeconds),
    ),
    ...(fromRecipe !== null ? recipeParamsInput(fromRecipe.recipe) : {}),
    ...(extended !== null ? { inputVideo: extended.info } : {}),
  };
  const params = validateRenderParams(input, {
    samplingType: manifest.sampling_type,
    latentWindowSize: manifest.framepack.default_latent_window_size,
    temporalCompression: manifest.vae.temporal_compression_ratio,
  });
  if (!cachesOf(manifest).includes(params.cache))
    throw new FarmError(
      "FAILED_PRECONDITION",
      `--cache ${params.cache} needs the step-cache transformer graphs, which this farm's bundle lacks (export with --step-cache-graphs)`,
    );
  if (fromRecipe !== null) checkRecipeParams(fromRecipe.recipe, params);
  const output = jobOutputOf(s);
  const webhook = req.webhookUrl === undefined ? undefined : await checkWebhook(deps, req.webhookUrl);

  // Scoped to the tenant: the same key from two tenants names two jobs (tenant names have no newline).
  const idemKey =
    req.idempotencyKey === "" ? null : createHash("sha256").update(`${tenant}\n${req.idempotencyKey}`).digest("hex");
  if (idemKey !== null) {
    const seen = await (await deps.idempotency).get(idemKey);
    if (seen !== null) {
      const jobId = new TextDecoder().decode(seen.value);
      const existing = await readJobIncludingExpiring(await deps.jobs, jobId);
      // Its entry goes just before its record: the key is free in a moment.
      if (existing?.record.expiring !== undefined)
        throw new FarmError(
          "UNAVAILABLE",
          `the job of this idempotency key, ${jobId}, finished long ago and is being removed (--retain-jobs); submit again in a moment for a new job`,
        );
      if (existing !== null && tenantOf(existing.record) === tenant)
        return { job: await deps.toJob(existing.record), deduplicated: true };
    }
  }

  // A repeated key is answered above even at the limit: the job it names exists already.
  const release = deps.admit?.() ?? (() => undefined);
  try {
    return await submitNew(deps, req, tenant, { params, output, idemKey, fromRecipe, webhook, extended }, signal);
  } finally {
    release();
  }
}

async function submitNew(
  deps: Submission,
  req: SubmitJobRequest,
  tenant: string,
  checked: {
    params: ReturnType<typeof validateRenderParams>;
    output: ReturnType<typeof jobOutputOf>;
    idemKey: string | null;
    fromRecipe: ReturnType<typeof recipeRequest>;
    webhook: string | undefined;
    extended: Awaited<ReturnType<typeof video>>;
  },
  signal?: AbortSignal,
): Promise<{ job: Job; deduplicated: boolean }> {
  const { manifest } = deps;
  const { output, idemKey, fromRecipe, webhook, extended } = checked;
  const first = extended === null ? await image(deps, req.image, "image", tenant) : null;
  if (first === null && extended === null)
    throw new FarmError("INVALID_ARGUMENT", "image is missing (give a start image, or a video to extend)");
  const last = await image(deps, req.endImage, "end image", tenant);
  const keyframes = await checkKeyframes(deps, req, tenant);
  const loras = await checkLoras(deps.store, manifest, req, tenant, fromRecipe?.recipe ?? null);
  const params = { ...checked.params, loras: loras.refs };
  const keyframeDigests = keyframes.map((k) => ({ time: k.time, sha256: k.sha256 }));
  const inputs = { start: first?.bytes ?? null, end: last?.bytes ?? null, video: extended?.bytes ?? null };
  if (fromRecipe !== null)
    checkRecipeImages(fromRecipe.recipe, inputs.start, inputs.end, keyframeDigests, inputs.video);
  // The bucket follows the start image's aspect, or the video's (Studio: its frames' native size).
  const source = extended?.info ?? first!.decoded;
  const size =
    "height" in params.size ? params.size : findNearestBucket(source.height, source.width, params.size.resolution);
  if (fromRecipe !== null) checkRecipeSize(fromRecipe.recipe, size);
  const jobId = randomUUID();
  const spec = { ...toJobSpec(jobId, params, size, tenant), output };
  deps.admitMemory?.(spec);
  await deps.beforeDispatch?.(spec);
  const digest = deps.bundleDigest;
  const sections = sectionPlanFor(params, manifest);
  const sc = manifest.vae.spatial_compression_ratio;
  const tasks = planJob({
    jobId,
    seed: params.seed,
    sections,
    hasEndImage: last !== null,
    keyframes: keyframes.length,
    trueCfg: usesTrueCfg(params),
    latent: { channels: manifest.vae.latent_channels, height: size.height / sc, width: size.width / sc },
    output,
    recipe: digest !== undefined,
    rng: params.sampler === "unipc" ? "demo" : "diffusers",
  });

  if (idemKey !== null) {
    try {
      await (await deps.idempotency).create(idemKey, new TextEncoder().encode(jobId));
    } catch (err) {
      // Lost a race with an identical submission: answer with that job.
      if (err instanceof FarmError && err.status === "ALREADY_EXISTS") return submitJob(deps, req, tenant);
      throw err;
    }
  }
  const keys = jobKeys(jobId);
  let created: JobRecord;
  try {
    signal?.throwIfAborted();
    // The farm's LoRA library, not the job's inputs: kept whatever becomes of this submission.
    await storeLoras(deps.store, loras);
    if (first !== null) await deps.store.put(keys.firstImage, first.bytes);
    if (extended !== null) await deps.store.put(keys.inputVideo, extended.bytes);
    if (last !== null) await deps.store.put(keys.lastImage, last.bytes);
    await storeKeyframes(deps, jobId, keyframes, tenant);
    if (digest !== undefined) {
      const recipe = makeRecipe({
        params,
        size,
        format: output.format,
        images: { ...inputs, keyframes: keyframeDigests },
        bundle: { name: deps.bundleName, digest },
        framefarmVersion: FRAMEFARM_VERSION,
      });
      await deps.store.put(keys.recipe, new TextEncoder().encode(recipeText(recipe)), "application/json");
    }
    signal?.throwIfAborted();
    created = await deps.dispatcher.submit(spec, tasks, {
      priority: req.priority,
      ...(webhook !== undefined ? { webhook: { url: webhook, tenant } } : {}),
      ...(idemKey !== null ? { idempotencyKey: idemKey } : {}),
      ...(deps.trace !== undefined ? { trace: deps.trace } : {}),
    });
  } catch (err) {
    // Leave nothing behind for a submission that did not become a job.
    await deps.store.deletePrefix(jobPrefix(jobId)).catch(() => undefined);
    if (idemKey !== null) await (await deps.idempotency).delete(idemKey).catch(() => undefined);
    throw err;
  }
  // The record as written, not read back: a read can miss a write that just landed (a NATS failover).
  return { job: await deps.toJob(created), deduplicated: false };
}
