/**
 * The public JobService over gRPC: SubmitJob (job-submission.ts) and the queries, GetJob, WatchJob
 * (a stream of state and progress, job-watch.ts), CancelJob and ListJobs, answered from the job
 * records; the messages are mapped to and from the farm's types in job-mapping.ts. The submit
 * page's HTTP API (coordinator/dashboard/tenant-api.ts) calls the same methods, and a few of its
 * own: resubmit, newest, options.
 *
 * Every call is authenticated first (coordinator/auth) and then sees only its tenant's jobs: another
 * tenant's job is NOT_FOUND with the same message as a job that does not exist, so ids cannot be
 * probed. Idempotency keys and uploads/ object keys are scoped to the tenant too.
 */
import {
  type Metadata,
  type ServerErrorResponse,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from "@grpc/grpc-js";
import { FarmError } from "../../shared/errors.js";
import { formatDuration } from "../../shared/duration.js";
import {
  JobState as PbJobState,
  type Job,
  type JobServiceServer,
  type SubmitJobRequest,
  type WatchJobResponse,
} from "../../proto/gen/framefarm/v1/jobs.js";
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { BundleManifest } from "../../shared/bundle/manifest.js";
import { Dispatcher, checkPriority } from "../dispatch/dispatcher.js";
import { readJob, type JobRecord } from "../dispatch/job-record.js";
import { latestPreview, progressOf, tenantOf } from "../dispatch/job-views.js";
import { DEFAULT_TENANT, TokenAuth } from "../auth/tokens.js";
import type { WebhookPolicy } from "../webhooks/policy.js";
import { requestError } from "./strict-decode.js";
import { jobStateToPb, settingsOf, timestamp, toGrpcError } from "./job-mapping.js";
import { IDEMPOTENCY_BUCKET, submitJob } from "./job-submission.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { jobOutputKeys, videoFileName } from "../planner/job-outputs.js";
import {
  JOBS_BUCKET,
  decodeJobEvent,
  isStepEvent,
  jobEventSubject,
  type StepEvent,
} from "../../shared/farm/protocol.js";
import { ROOT_CONTEXT, SpanKind, type Context } from "@opentelemetry/api";
import { TRACE_ATTRS, contextFromHeaders, recordFailure, spanCarrier, tracer } from "../../shared/telemetry/tracing.js";
import { JobWatch, type WatchEvent } from "./job-watch.js";
import { submitOptions, type SubmitOptions } from "./submit-options.js";
import { resubmitRequest } from "./job-resubmission.js";

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
  /** Tenants with an operator's rights: the priority they submit with is not capped. */
  operatorTenants?: readonly string[];
  /**
   * With tokens on, the highest priority a tenant that is not an operator gets (a higher one is
   * lowered to it); default TENANT_MAX_PRIORITY. An open farm caps nothing.
   */
  tenantMaxPriority?: number;
  /** The most unfinished (queued or running) jobs a tenant may have; more are RESOURCE_EXHAUSTED. Unlimited when absent. */
  maxQueuedPerTenant?: number;
  /** Tenants whose tokens only scrape /metrics: every call of theirs is PERMISSION_DENIED. */
  scrapeOnlyTenants?: readonly string[];
  /** The bundle's digest (gpu-node/runtime/bundle-digest): without it jobs get no recipe and recipes are refused. */
  bundleDigest?: string;
  /** Which webhook URLs submissions may name; without it a webhook_url is FAILED_PRECONDITION. */
  webhooks?: WebhookPolicy;
  /** How long finished jobs are kept (`--retain-jobs`), for the message of a job not found; absent: kept for good. */
  retainJobsMs?: number;
  /** Refuses a job the farm cannot run (embedded mode: RESOURCE_EXHAUSTED when it cannot fit in memory), before anything is stored. */
  admitMemory?: (spec: JobSpec) => void;
  /** Awaited once a new job is checked, before anything is stored or dispatched (embedded mode warms its models up here). */
  beforeDispatch?: (spec: JobSpec) => Promise<void>;
}

/** The default cap of a tenant's priority (with tokens on, operators aside): no jumping the queue. */
export const TENANT_MAX_PRIORITY = 0;

export class JobService {
  private readonly idempotency: Promise<KeyValue>;
  private readonly jobs: Promise<KeyValue>;
  private readonly auth: TokenAuth;
  /** Submissions admitted but not yet jobs, per tenant (they count towards maxQueuedPerTenant). */
  private readonly admitted = new Map<string, number>();
  /** Submissions refused at maxQueuedPerTenant since start, per tenant (per-tenant metrics). */
  private readonly refused = new Map<string, number>();

  constructor(private readonly deps: JobServiceDeps) {
    this.idempotency = deps.bus.kv(IDEMPOTENCY_BUCKET);
    this.jobs = deps.bus.kv(JOBS_BUCKET);
    // Awaited by the first call that needs them; one stopped before any call must not reject unheard.
    for (const p of [this.idempotency, this.jobs]) p.catch(() => undefined);
    this.auth = deps.auth ?? TokenAuth.open();
  }

  async toJob(r: JobRecord, live?: StepEvent): Promise<Job> {
    const keys = jobOutputKeys(r.spec.jobId, r.tasks);
    const expiry = this.deps.urlExpirySeconds ?? 3600;
    const done = r.state === "SUCCEEDED";
    const preview = r.state === "CANCELLED" ? undefined : latestPreview(r);
    return {
      id: r.spec.jobId,
      state: jobStateToPb(r.state),
      settings: settingsOf(r),
      bundle: this.deps.bundleName,
      priority: r.priority ?? 0,
      progress: progressOf(r, live),
      createdAt: timestamp(r.createdAt),
      updatedAt: timestamp(r.updatedAt),
      videoKey: done ? keys.video : "",
      // A browser saves the video from its link; players and clients fetch it all the same.
      videoUrl: done ? await this.deps.store.presignedGetUrl(keys.video, expiry, videoFileName(r)) : "",
      ...(done ? { videoUrlExpiresAt: timestamp(new Date(Date.now() + expiry * 1000).toISOString()) } : {}),
      error: r.error ?? "",
      errorStatus: r.state === "FAILED" ? (r.errorStatus ?? "INTERNAL") : "",
      numFrames: r.spec.params.numFrames,
      keyframeTimes: r.spec.params.keyframeTimes ?? [],
      loras: (r.spec.params.loras ?? []).map((l) => ({ name: l.name, sha256: l.sha256, weight: l.weight })),
      height: r.spec.height,
      width: r.spec.width,
      previewKey: preview ?? "",
      previewUrl: preview !== undefined ? await this.deps.store.presignedGetUrl(preview, expiry) : "",
      recipeKey: done && keys.recipe !== undefined ? keys.recipe : "",
      recipeUrl: done && keys.recipe !== undefined ? await this.deps.store.presignedGetUrl(keys.recipe, expiry) : "",
      framesKey: done && keys.frames !== undefined ? keys.frames : "",
      framesUrl: done && keys.frames !== undefined ? await this.deps.store.presignedGetUrl(keys.frames, expiry) : "",
    };
  }

  /**
   * Validates, stores and plans a submission (coordinator/api/job-submission.ts); tenant defaults to
   * DEFAULT_TENANT for in-process callers (embedded mode has no tenants). Its span is the root of
   * the job's trace, or a child of the caller's (parent: a gRPC call's traceparent metadata).
   */
  async submit(
    req: SubmitJobRequest,
    tenant: string = DEFAULT_TENANT,
    signal?: AbortSignal,
    parent: Context = ROOT_CONTEXT,
  ): Promise<{ job: Job; deduplicated: boolean }> {
    const span = tracer().startSpan(
      "framefarm.v1.JobService/SubmitJob",
      {
        kind: SpanKind.SERVER,
        attributes: { "rpc.system": "grpc", "rpc.service": "framefarm.v1.JobService", "rpc.method": "SubmitJob" },
      },
      parent,
    );
    const trace = spanCarrier(span);
    try {
      const out = await submitJob(
        {
          ...this.deps,
          jobs: this.jobs,
          idempotency: this.idempotency,
          toJob: (r) => this.toJob(r),
          admit: () => this.admit(tenant),
          ...(trace !== undefined ? { trace } : {}),
        },
        { ...req, priority: this.priorityFor(req.priority, tenant) },
        tenant,
        signal,
      );
      span.setAttribute(TRACE_ATTRS.jobId, out.job.id);
      // A repeated idempotency key: the job's own trace began with its first submission.
      if (out.deduplicated) span.setAttribute("framefarm.deduplicated", true);
      return out;
    } catch (err) {
      recordFailure(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  /** The priority a submission gets: capped for tenants that are not operators (with tokens on). */
  private priorityFor(priority: number, tenant: string): number {
    checkPriority(priority); // out of range is refused, not capped
    if (this.auth.isOpen || (this.deps.operatorTenants ?? []).includes(tenant)) return priority;
    return Math.min(priority, this.deps.tenantMaxPriority ?? TENANT_MAX_PRIORITY);
  }

  /**
   * Admits one more job of the tenant under maxQueuedPerTenant (RESOURCE_EXHAUSTED if at the limit);
   * the returned release ends the admission once the job is submitted or refused.
   */
  private admit(tenant: string): () => void {
    const limit = this.deps.maxQueuedPerTenant;
    if (limit === undefined) return () => undefined;
    const pending = this.admitted.get(tenant) ?? 0;
    const have = this.deps.dispatcher.unfinishedJobs(tenant) + pending;
    if (have >= limit) {
      this.refused.set(tenant, (this.refused.get(tenant) ?? 0) + 1);
      throw new FarmError(
        "RESOURCE_EXHAUSTED",
        `tenant ${tenant} has ${have} unfinished jobs, the limit (--max-queued-per-tenant ${limit}); submit again when one has finished`,
      );
    }
    this.admitted.set(tenant, pending + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.admitted.get(tenant) ?? 1) - 1;
      if (n === 0) this.admitted.delete(tenant);
      else this.admitted.set(tenant, n);
    };
  }

  /** Per tenant, submissions refused at the queued-job limit since this coordinator started. */
  refusals(): ReadonlyMap<string, number> {
    return this.refused;
  }

  /** The tenant's job; another tenant's is NOT_FOUND exactly as a missing one. */
  async get(id: string, tenant: string): Promise<JobRecord> {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(id))
      throw new FarmError(
        "INVALID_ARGUMENT",
        `invalid job id ${JSON.stringify(id)}: job ids are 1-64 characters of [A-Za-z0-9_-]`,
      );
    const r = await readJob(await this.jobs, id);
    // One message for missing, expired and another tenant's jobs: ids cannot be probed.
    const retain = this.deps.retainJobsMs;
    if (r === null || tenantOf(r.record) !== tenant)
      throw new FarmError(
        "NOT_FOUND",
        `job ${id} does not exist${retain === undefined ? "" : ` (finished jobs are removed ${formatDuration(retain)} after they end: --retain-jobs)`}`,
      );
    return r.record;
  }

  async cancel(id: string, tenant: string): Promise<JobRecord> {
    await this.get(id, tenant);
    return (await this.deps.dispatcher.cancel(id)) ?? this.get(id, tenant);
  }

  async list(
    states: PbJobState[],
    pageSize: number,
    pageToken: string,
    tenant: string,
  ): Promise<{ jobs: Job[]; next: string }> {
    const unknown = states.filter((s) => PbJobState[s] === undefined || s === PbJobState.JOB_STATE_UNSPECIFIED);
    if (unknown.length > 0)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `states ${unknown.join(", ")} are not job states (1 queued to 5 cancelled)`,
      );
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

  /**
   * The tenant of the submission's job, submitted again with the same settings and images and
   * another seed (random when absent): "same settings, new seed".
   */
  async resubmit(id: string, tenant: string, seed?: bigint): Promise<{ job: Job; deduplicated: boolean }> {
    const record = await this.get(id, tenant);
    return this.submit(await resubmitRequest(record, this.deps.store, seed), tenant);
  }

  /** The tenant's newest jobs, newest first (every page of list(), sorted by creation). */
  async newest(tenant: string, limit: number): Promise<Job[]> {
    const all: Job[] = [];
    let token = "";
    do {
      const page = await this.list([], 500, token, tenant);
      all.push(...page.jobs);
      token = page.next;
    } while (token !== "");
    const created = (j: Job): number => Number(j.createdAt?.seconds ?? 0n) * 1000 + (j.createdAt?.nanos ?? 0) / 1e6;
    return all.sort((a, b) => created(b) - created(a)).slice(0, limit);
  }

  /** What a submission may ask of this farm (its bundle's modes, samplers, caches; defaults, limits). */
  options(): SubmitOptions {
    return submitOptions(this.deps.manifest, this.deps.bundleName);
  }

  /**
   * The tenant of an Authorization header, if it may call the job API at all: the check of every
   * gRPC call, for the HTTP API of the same jobs (UNAUTHENTICATED, or PERMISSION_DENIED for a
   * token that only scrapes /metrics).
   */
  tenantForAuthorization(header: string | readonly (string | Buffer)[] | undefined): string {
    const tenant = this.auth.tenantForAuthorization(header);
    if (this.deps.scrapeOnlyTenants?.includes(tenant))
      throw new FarmError(
        "PERMISSION_DENIED",
        `tenant ${tenant} may only scrape /metrics (--metrics-tenants); it cannot call the job API`,
      );
    return tenant;
  }

  /** Runs fn whenever the tokens change (streams then check their caller again); returns the unsubscribe. */
  onAuthChange(fn: () => void): () => void {
    return this.auth.onChange(fn);
  }

  /** The tenant of a call's token, if it may call at all (checked again on streams when tokens change). */
  private tenantOf(metadata: Metadata): string {
    return this.tenantForAuthorization(metadata.get("authorization"));
  }

  /** The caller's tenant (UNAUTHENTICATED first), then any refusal of the strict decoder. */
  private caller(call: { metadata: Metadata; request: unknown }): string {
    const tenant = this.tenantOf(call.metadata);
    const bad = requestError(call.request);
    if (bad !== undefined) throw bad;
    return tenant;
  }

  /** The gRPC handlers. */
  handlers(): JobServiceServer {
    const unary =
      <Req, Res>(fn: (req: Req, tenant: string, signal: AbortSignal, metadata: Metadata) => Promise<Res>) =>
      (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
        // Deadlines are honoured: work stops where it can once the caller's deadline has passed.
        const abort = new AbortController();
        const deadline = Number(call.getDeadline());
        const stop = (): void => {
          const late = Date.now() >= deadline;
          abort.abort(
            new FarmError(
              late ? "DEADLINE_EXCEEDED" : "CANCELLED",
              late ? "the call's deadline passed before the work was done" : "the caller cancelled the call",
            ),
          );
        };
        // A large request can outlast its deadline before this handler even runs.
        if (call.cancelled) stop();
        call.once("cancelled", stop);
        const timer = Number.isFinite(deadline) ? setTimeout(stop, Math.max(0, deadline - Date.now())) : undefined;
        Promise.resolve()
          .then(() => fn(call.request, this.caller(call), abort.signal, call.metadata))
          .finally(() => clearTimeout(timer))
          .then(
            (res) => cb(null, res),
            (err) => cb(toGrpcError(err) as ServerErrorResponse),
          );
      };
    return {
      submitJob: unary(async (req, tenant, signal, metadata) =>
        this.submit(req, tenant, signal, traceParentOf(metadata)),
      ),
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
    const write = (e: WatchEvent): void => {
      call.write({ jobId: e.job!.id, sequence: ++seq, at: timestamp(new Date().toISOString()), ...e });
    };
    try {
      const tenant = this.caller(call);
      const { watch, first } = await JobWatch.start(this, call.request.id, tenant);
      write(first);
      if (watch.ended) return void call.end();
      await new Promise<void>((resolve, reject) => {
        let chain = Promise.resolve();
        // A token revoked (or its tenant changed) while watching ends the stream with the refusal.
        const offAuth = this.auth.onChange(() => {
          try {
            if (this.tenantOf(call.metadata) === tenant) return;
            throw new FarmError("UNAUTHENTICATED", "the bearer token is not valid for this farm");
          } catch (err) {
            stop();
            reject(err as Error);
          }
        });
        const stop = (): void => {
          off();
          offAuth();
        };
        const off = this.deps.bus.events.subscribe(jobEventSubject(call.request.id), (subject, data) => {
          const event = decodeJobEvent(subject, data);
          if (event === null) return;
          chain = chain.then(async () => {
            for (const e of await watch.next(event)) write(e);
            if (watch.ended) {
              stop();
              resolve();
            }
          });
        });
        call.on("cancelled", () => (stop(), resolve()));
      });
      call.end();
    } catch (err) {
      // grpc-js sends a stream's status from end(): its 'error' listener sets the status, then ends.
      // destroy() would skip end(), and the client would wait forever.
      call.emit("error", Object.assign(new Error((err as Error).message), toGrpcError(err)));
    }
  }
}

/** The caller's trace context from a call's `traceparent` / `tracestate` metadata (W3C trace context). */
function traceParentOf(metadata: Metadata): Context {
  return contextFromHeaders(
    (key) => {
      const v = metadata.get(key)[0];
      return v === undefined ? undefined : String(v);
    },
    () => Object.keys(metadata.getMap()),
  );
}
