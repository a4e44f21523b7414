/**
 * The public JobService over gRPC: validates a submission (settings, images) before anything is
 * stored, stores the inputs, plans the job and hands it to the dispatcher; answers GetJob,
 * WatchJob (a stream of state and progress), CancelJob and ListJobs from the job records.
 *
 * Every call is authenticated first (coordinator/auth) and then sees only its tenant's jobs: another
 * tenant's job is NOT_FOUND with the same message as a job that does not exist, so ids cannot be
 * probed. Idempotency keys and uploads/ object keys are scoped to the tenant too.
 */
import { createHash, randomUUID } from "node:crypto";
import { status as GrpcStatus, type Metadata, type ServerErrorResponse, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from "@grpc/grpc-js";
import { FarmError } from "../../shared/errors.js";
import { JobState as PbJobState, SamplingMode, type ImageInput, type Job, type JobServiceServer, type Progress, type RenderSettings, type WatchJobResponse } from "../../proto/gen/framefarm/v1/jobs.js";
import type { Timestamp } from "../../proto/gen/google/protobuf/timestamp.js";
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { validateObjectKey } from "../../shared/store/object-store.js";
import type { BundleManifest } from "../../shared/bundle/manifest.js";
import { decodeImage, DEFAULT_IMAGE_LIMITS, type DecodedImage } from "../../shared/image/decode.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import { validateRenderParams, usesTrueCfg, type RenderParamsInput } from "../../shared/job/render-params.js";
import { toJobSpec, type JobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { planJob, jobKeys, jobPrefix } from "../planner/job-plan.js";
import { Dispatcher, jobEventSubject, JOBS_BUCKET, PRIORITY_RANGE, type StepEvent } from "../dispatch/dispatcher.js";
import { readJob, type JobRecord } from "../dispatch/job-record.js";
import { DEFAULT_TENANT, TokenAuth } from "../auth/tokens.js";
import { requestError } from "./strict-decode.js";

export interface JobServiceDeps {
  bus: Bus;
  store: ObjectStore;
  dispatcher: Dispatcher;
  manifest: BundleManifest;
  bundleName: string;
  /** Lifetime of presigned video URLs. */
  urlExpirySeconds?: number;
  /** Who may call, as which tenant; open (everyone is DEFAULT_TENANT) when absent. */
  auth?: TokenAuth;
  /** Refuses a job the farm cannot run (embedded mode: RESOURCE_EXHAUSTED when it cannot fit in memory), before anything is stored. */
  admit?: (spec: JobSpec) => void;
}

const IDEMPOTENCY_KEY = /^[A-Za-z0-9._:-]{1,128}$/;
export const IDEMPOTENCY_BUCKET = "idempotency";
const TERMINAL = new Set<JobRecord["state"]>(["SUCCEEDED", "FAILED", "CANCELLED"]);
const KNOWN_MODES = new Set<number>([SamplingMode.SAMPLING_MODE_UNSPECIFIED, SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING, SamplingMode.SAMPLING_MODE_VANILLA]);

/** The tenant a record belongs to; records from before tenants belong to DEFAULT_TENANT. */
export const tenantOf = (r: JobRecord): string => r.spec.tenant ?? DEFAULT_TENANT;

const STATE_TO_PB: Record<JobRecord["state"], PbJobState> = {
  QUEUED: PbJobState.JOB_STATE_QUEUED,
  RUNNING: PbJobState.JOB_STATE_RUNNING,
  SUCCEEDED: PbJobState.JOB_STATE_SUCCEEDED,
  FAILED: PbJobState.JOB_STATE_FAILED,
  CANCELLED: PbJobState.JOB_STATE_CANCELLED,
};

/** A FarmError (or anything else) as the gRPC error the client sees. */
export function toGrpcError(err: unknown): Partial<ServerErrorResponse> {
  if (err instanceof FarmError) return { code: err.code, details: err.message, message: err.message };
  return { code: GrpcStatus.INTERNAL, details: `internal error: ${(err as Error)?.message ?? String(err)}` };
}

function timestamp(iso: string): Timestamp {
  const ms = Date.parse(iso);
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** Sections done, the live step (from the latest step event) and an ETA from measured sections. */
export function progressOf(r: JobRecord, live?: StepEvent): Progress {
  const denoise = r.tasks.filter((t) => t.kind === "denoise");
  const done = denoise.filter((t) => r.taskStates[t.id] === "done").length;
  const spans = (r.taskLog ?? []).filter((e) => e.ok && e.taskId.includes(".denoise.")).map((e) => Date.parse(e.finishedAt) - Date.parse(e.startedAt));
  const perSection = spans.length > 0 ? spans.reduce((a, b) => a + b, 0) / spans.length / 1000 : 0;
  const current = live !== undefined && live.section >= done ? live : undefined;
  const remaining = denoise.length - done - (current !== undefined ? current.step / current.steps : 0);
  return {
    sectionsTotal: denoise.length,
    sectionsDone: done,
    currentSection: current?.section ?? Math.min(done, Math.max(0, denoise.length - 1)),
    currentStep: current?.step ?? 0,
    stepsPerSection: r.spec.params.steps,
    etaSeconds: r.state === "SUCCEEDED" ? 0 : Math.max(0, remaining * perSection),
  };
}

/** The preview of the section decoded last (decode results arrive in the task log in order). */
export function latestPreview(r: JobRecord): string | undefined {
  let latest: string | undefined;
  for (const e of r.taskLog ?? []) if (e.ok) latest = previewOf(r, e.taskId) ?? latest;
  return latest;
}

/** The preview a finished decode task wrote, if the event is about one. */
function previewOf(r: JobRecord, taskId: string | undefined): string | undefined {
  const task = taskId === undefined ? undefined : r.tasks.find((t) => t.id === taskId);
  return task?.kind === "decode" && r.taskStates[task.id] === "done" ? task.outputs["preview"] : undefined;
}

function settingsOf(r: JobRecord): RenderSettings {
  const p = r.spec.params;
  return {
    prompt: p.prompt,
    ...(p.negativePrompt !== null ? { negativePrompt: p.negativePrompt } : {}),
    length: { $case: "numFrames", value: p.numFrames },
    mode: p.samplingType === "vanilla" ? SamplingMode.SAMPLING_MODE_VANILLA : SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
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
  };
}

export class JobService {
  private readonly idempotency: Promise<KeyValue>;
  private readonly jobs: Promise<KeyValue>;
  private readonly auth: TokenAuth;

  constructor(private readonly deps: JobServiceDeps) {
    this.idempotency = deps.bus.kv(IDEMPOTENCY_BUCKET);
    this.jobs = deps.bus.kv(JOBS_BUCKET);
    this.auth = deps.auth ?? TokenAuth.open();
  }

  async toJob(r: JobRecord, live?: StepEvent): Promise<Job> {
    const keys = jobKeys(r.spec.jobId);
    const expiry = this.deps.urlExpirySeconds ?? 3600;
    const done = r.state === "SUCCEEDED";
    const preview = r.state === "CANCELLED" ? undefined : latestPreview(r);
    return {
      id: r.spec.jobId,
      state: STATE_TO_PB[r.state],
      settings: settingsOf(r),
      bundle: this.deps.bundleName,
      priority: r.priority ?? 0,
      progress: progressOf(r, live),
      createdAt: timestamp(r.createdAt),
      updatedAt: timestamp(r.updatedAt),
      videoKey: done ? keys.video : "",
      videoUrl: done ? await this.deps.store.presignedGetUrl(keys.video, expiry) : "",
      ...(done ? { videoUrlExpiresAt: timestamp(new Date(Date.now() + expiry * 1000).toISOString()) } : {}),
      error: r.error ?? "",
      errorStatus: r.state === "FAILED" ? (r.errorStatus ?? "INTERNAL") : "",
      numFrames: r.spec.params.numFrames,
      height: r.spec.height,
      width: r.spec.width,
      previewKey: preview ?? "",
      previewUrl: preview !== undefined ? await this.deps.store.presignedGetUrl(preview, expiry) : "",
    };
  }

  private async image(input: ImageInput | undefined, what: string, tenant: string): Promise<{ bytes: Uint8Array; decoded: DecodedImage } | null> {
    if (input?.source === undefined) return null;
    let bytes: Uint8Array;
    if (input.source.$case === "data") bytes = input.source.value;
    else {
      // A tenant reads only its own uploads; the key is checked as a whole, never joined to a path.
      const key = validateObjectKey(input.source.value);
      const prefix = `uploads/${tenant}/`;
      if (!key.startsWith(prefix)) throw new FarmError("PERMISSION_DENIED", `${what} object key must be under ${prefix}, got ${JSON.stringify(key)}`);
      bytes = await this.deps.store.get(key);
    }
    return { bytes, decoded: await decodeImage(bytes, DEFAULT_IMAGE_LIMITS, what) };
  }

  /** tenant defaults to DEFAULT_TENANT for in-process callers (embedded mode has no tenants). */
  /**
   * signal: the caller went away (deadline or cancel). Checked until the job is handed to the
   * dispatcher; a submission aborted before that leaves nothing stored.
   */
  async submit(req: Parameters<JobServiceServer["submitJob"]>[0]["request"], tenant: string = DEFAULT_TENANT, signal?: AbortSignal): Promise<{ job: Job; deduplicated: boolean }> {
    const { manifest } = this.deps;
    if (req.bundle !== "" && req.bundle !== this.deps.bundleName) throw new FarmError("NOT_FOUND", `unknown bundle ${JSON.stringify(req.bundle)}; this farm serves ${JSON.stringify(this.deps.bundleName)}`);
    // Also checked by the dispatcher; here so a bad one is refused before any image is decoded or stored.
    if (req.priority < PRIORITY_RANGE.min || req.priority > PRIORITY_RANGE.max) throw new FarmError("INVALID_ARGUMENT", `priority must be an integer from ${PRIORITY_RANGE.min} to ${PRIORITY_RANGE.max}, got ${req.priority}`);
    if (req.idempotencyKey !== "" && !IDEMPOTENCY_KEY.test(req.idempotencyKey)) throw new FarmError("INVALID_ARGUMENT", "idempotency key must be 1-128 characters of [A-Za-z0-9._:-]");
    const s = req.settings;
    if (s === undefined) throw new FarmError("INVALID_ARGUMENT", "settings are missing");
    // proto3 enums are open: an unknown number decodes fine and would fall back to the default mode.
    if (!KNOWN_MODES.has(s.mode)) throw new FarmError("INVALID_ARGUMENT", `mode ${s.mode} is not a SamplingMode (0 unspecified, 1 inverted anti-drifting, 2 vanilla)`);
    const input: RenderParamsInput = {
      prompt: s.prompt,
      negativePrompt: s.negativePrompt,
      ...(s.length?.$case === "seconds" ? { seconds: s.length.value } : s.length?.$case === "numFrames" ? { numFrames: s.length.value } : {}),
      samplingType: s.mode === SamplingMode.SAMPLING_MODE_VANILLA ? "vanilla" : s.mode === SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING ? "inverted" : undefined,
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
      hasEndImage: req.endImage?.source !== undefined,
    };
    const params = validateRenderParams(input, { samplingType: manifest.sampling_type, latentWindowSize: manifest.framepack.default_latent_window_size });

    // Scoped to the tenant: the same key from two tenants names two jobs (tenant names have no newline).
    const idemKey = req.idempotencyKey === "" ? null : createHash("sha256").update(`${tenant}\n${req.idempotencyKey}`).digest("hex");
    if (idemKey !== null) {
      const seen = await (await this.idempotency).get(idemKey);
      if (seen !== null) {
        const existing = await readJob(await this.jobs, new TextDecoder().decode(seen.value));
        if (existing !== null && tenantOf(existing.record) === tenant) return { job: await this.toJob(existing.record), deduplicated: true };
      }
    }

    const first = await this.image(req.image, "image", tenant);
    if (first === null) throw new FarmError("INVALID_ARGUMENT", "image is missing");
    const last = await this.image(req.endImage, "end image", tenant);
    const size = "height" in params.size ? params.size : findNearestBucket(first.decoded.height, first.decoded.width, params.size.resolution);
    const jobId = randomUUID();
    const spec = toJobSpec(jobId, params, size, tenant);
    this.deps.admit?.(spec);
    const sections = sectionPlanFor(params, manifest);
    const sc = manifest.vae.spatial_compression_ratio;
    const tasks = planJob({ jobId, seed: params.seed, sections, hasEndImage: last !== null, trueCfg: usesTrueCfg(params), latent: { channels: manifest.vae.latent_channels, height: size.height / sc, width: size.width / sc } });

    if (idemKey !== null) {
      try {
        await (await this.idempotency).create(idemKey, new TextEncoder().encode(jobId));
      } catch (err) {
        // Lost a race with an identical submission: answer with that job.
        if (err instanceof FarmError && err.status === "ALREADY_EXISTS") return this.submit(req, tenant);
        throw err;
      }
    }
    const keys = jobKeys(jobId);
    try {
      signal?.throwIfAborted();
      await this.deps.store.put(keys.firstImage, first.bytes);
      if (last !== null) await this.deps.store.put(keys.lastImage, last.bytes);
      signal?.throwIfAborted();
      await this.deps.dispatcher.submit(spec, tasks, { priority: req.priority });
    } catch (err) {
      // Leave nothing behind for a submission that did not become a job.
      await this.deps.store.deletePrefix(jobPrefix(jobId)).catch(() => undefined);
      if (idemKey !== null) await (await this.idempotency).delete(idemKey).catch(() => undefined);
      throw err;
    }
    return { job: await this.toJob((await readJob(await this.jobs, jobId))!.record), deduplicated: false };
  }

  /** The tenant's job; another tenant's is NOT_FOUND exactly as a missing one. */
  async get(id: string, tenant: string): Promise<JobRecord> {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) throw new FarmError("INVALID_ARGUMENT", `invalid job id ${JSON.stringify(id)}: job ids are 1-64 characters of [A-Za-z0-9_-]`);
    const r = await readJob(await this.jobs, id);
    if (r === null || tenantOf(r.record) !== tenant) throw new FarmError("NOT_FOUND", `job ${id} does not exist`);
    return r.record;
  }

  async cancel(id: string, tenant: string): Promise<JobRecord> {
    await this.get(id, tenant);
    return (await this.deps.dispatcher.cancel(id)) ?? this.get(id, tenant);
  }

  async list(states: PbJobState[], pageSize: number, pageToken: string, tenant: string): Promise<{ jobs: Job[]; next: string }> {
    const unknown = states.filter((s) => PbJobState[s] === undefined || s === PbJobState.JOB_STATE_UNSPECIFIED);
    if (unknown.length > 0) throw new FarmError("INVALID_ARGUMENT", `states ${unknown.join(", ")} are not job states (1 queued to 5 cancelled)`);
    const size = pageSize === 0 ? 50 : Math.min(pageSize, 500);
    const keys = (await (await this.jobs).keys()).filter((k) => k > pageToken);
    const out: Job[] = [];
    for (const k of keys) {
      const r = await readJob(await this.jobs, k);
      if (r === null || tenantOf(r.record) !== tenant) continue;
      const job = await this.toJob(r.record);
      if (states.length > 0 && !states.includes(job.state)) continue;
      out.push(job);
      if (out.length === size) return { jobs: out, next: k };
    }
    return { jobs: out, next: "" };
  }

  /** The caller's tenant (UNAUTHENTICATED first), then any refusal of the strict decoder. */
  private caller(call: { metadata: Metadata; request: unknown }): string {
    const tenant = this.auth.tenantForAuthorization(call.metadata.get("authorization"));
    const bad = requestError(call.request);
    if (bad !== undefined) throw bad;
    return tenant;
  }

  /** The gRPC handlers. */
  handlers(): JobServiceServer {
    const unary =
      <Req, Res>(fn: (req: Req, tenant: string, signal: AbortSignal) => Promise<Res>) =>
      (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
        // Deadlines are honoured: work stops where it can once the caller's deadline has passed.
        const abort = new AbortController();
        const deadline = Number(call.getDeadline());
        const stop = (): void => {
          const late = Date.now() >= deadline;
          abort.abort(new FarmError(late ? "DEADLINE_EXCEEDED" : "CANCELLED", late ? "the call's deadline passed before the work was done" : "the caller cancelled the call"));
        };
        // A large request can outlast its deadline before this handler even runs.
        if (call.cancelled) stop();
        call.once("cancelled", stop);
        const timer = Number.isFinite(deadline) ? setTimeout(stop, Math.max(0, deadline - Date.now())) : undefined;
        Promise.resolve()
          .then(() => fn(call.request, this.caller(call), abort.signal))
          .finally(() => clearTimeout(timer))
          .then(
            (res) => cb(null, res),
            (err) => cb(toGrpcError(err) as ServerErrorResponse),
          );
      };
    return {
      submitJob: unary(async (req, tenant, signal) => this.submit(req, tenant, signal)),
      getJob: unary(async (req, tenant) => ({ job: await this.toJob(await this.get(req.id, tenant)) })),
      cancelJob: unary(async (req, tenant) => ({ job: await this.toJob(await this.cancel(req.id, tenant)) })),
      listJobs: unary(async (req, tenant) => {
        const { jobs, next } = await this.list(req.states, req.pageSize, req.pageToken, tenant);
        return { jobs, nextPageToken: next };
      }),
      watchJob: (call: ServerWritableStream<{ id: string }, WatchJobResponse>) => void this.watch(call),
    };
  }

  private async watch(call: ServerWritableStream<{ id: string }, WatchJobResponse>): Promise<void> {
    let seq = 0n;
    let live: StepEvent | undefined;
    const send = async (r: JobRecord, stateChanged: boolean, previewKey?: string): Promise<void> => {
      const job = await this.toJob(r, live);
      const event: WatchJobResponse["event"] =
        previewKey !== undefined ? { $case: "previewKey", value: previewKey } : stateChanged ? { $case: "state", value: job.state } : { $case: "progress", value: job.progress! };
      call.write({ jobId: r.spec.jobId, sequence: ++seq, at: timestamp(new Date().toISOString()), event, job });
    };
    try {
      const tenant = this.caller(call);
      let record = await this.get(call.request.id, tenant);
      await send(record, true);
      if (TERMINAL.has(record.state)) return void call.end();
      await new Promise<void>((resolve) => {
        let chain = Promise.resolve();
        const off = this.deps.bus.events.subscribe(jobEventSubject(call.request.id), (_subject, data) => {
          chain = chain.then(async () => {
            const e = JSON.parse(new TextDecoder().decode(data)) as Partial<StepEvent> & { taskId?: string };
            if (typeof e.step === "number") {
              // A step event: live progress on the record we have, no state read.
              live = e as StepEvent;
              return send(record, false);
            }
            const next = await this.get(call.request.id, tenant);
            const changed = next.state !== record.state;
            record = next;
            await send(record, changed);
            const preview = previewOf(record, e.taskId);
            if (preview !== undefined && record.state !== "CANCELLED") await send(record, false, preview);
            if (TERMINAL.has(record.state)) {
              off();
              resolve();
            }
          });
        });
        call.on("cancelled", () => (off(), resolve()));
      });
      call.end();
    } catch (err) {
      // grpc-js sends a stream's status from end(): its 'error' listener sets the status, then ends.
      // destroy() would skip end(), and the client would wait forever.
      call.emit("error", Object.assign(new Error((err as Error).message), toGrpcError(err)));
    }
  }
}
