/**
 * A job's state as stored in the bus KV (bucket "jobs", one key per job): the spec, the planned
 * tasks and each task's state. Every change is a revision-checked update, so two coordinators (or
 * a restarted one) can never both advance the same job.
 */
import { FarmError } from "../../shared/errors.js";
import type { KeyValue } from "../../shared/bus/bus.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import type { JobState, StageTask } from "../../shared/farm/protocol.js";
import { appendWebhookEvents, type JobWebhook } from "../webhooks/events.js";
import type { TraceCarrier } from "../../shared/telemetry/tracing.js";

/** Tenant-scoped idempotency keys (SHA-256 of tenant and key), each naming its job's id. */
export const IDEMPOTENCY_BUCKET = "idempotency";

/**
 * pending: waits for its dependencies; ready: runnable, held by the dispatcher until its stage
 * queue has room (so priority decides what runs next); queued: on the stage queue or running;
 * done; failed: out of attempts.
 */
export type TaskState = "pending" | "ready" | "queued" | "done" | "failed";

export interface JobRecord {
  spec: JobSpec;
  state: JobState;
  tasks: StageTask[];
  taskStates: Record<string, TaskState>;
  attempts: Record<string, number>;
  /** Higher runs first; equal priorities run oldest job first. Absent in older records: 0. */
  priority?: number;
  /** Operator retries of this job so far (each gives failed tasks a fresh attempt budget). */
  retries?: number;
  /** Per task, the attempts spent before the latest retry. */
  attemptsBeforeRetry?: Record<string, number>;
  /** Per task, the times it was run again because an object it wrote was lost (coordinator/dispatch/recompute.ts). */
  recomputes?: Record<string, number>;
  /** Per task, its failed attempts caused by a lost input: they do not count against its attempts. */
  inputLosses?: Record<string, number>;
  /** Per task that found a lost input, the task recomputing it: it is not ready before that is done. */
  waitingFor?: Record<string, string>;
  error?: string;
  errorStatus?: string;
  /**
   * When each task last became ready (its inputs done, or its failed attempt returned): the start of
   * its current attempt's wait for a node. Absent in older records.
   */
  readyAt?: Record<string, string>;
  /**
   * The latest attempts' nodes and time spans, in the order results arrived (the job's event log):
   * at most TASK_LOG_KEEP, so that a long job's record stays bounded (every write rewrites it).
   */
  taskLog?: TaskLogEntry[];
  /** Attempts logged before the oldest entry still in taskLog (dropped to keep it bounded). */
  taskLogDropped?: number;
  /** Per unfinished task, the nodes that failed it since the job's last retry: others should take it. */
  avoidNodes?: Record<string, string[]>;
  /** The tenant-scoped idempotency key this job was submitted under (its entry goes when the job expires). */
  idempotencyKey?: string;
  /**
   * Set when retention starts removing the job (ISO time): from then on it reads as absent
   * (readJob), nothing changes it, and the sweep that finds it finishes removing it.
   */
  expiring?: string;
  createdAt: string;
  updatedAt: string;
  /**
   * The job's webhook and its events: every change that makes one appends it in the same write
   * (updateJob), which coordinator/webhooks sends. Absent for jobs without a webhook.
   */
  webhook?: JobWebhook;
  /**
   * W3C trace context of the job's SubmitJob span: every dispatch of its tasks is a child of it,
   * whichever coordinator dispatches (after a failover too). Absent when not tracing.
   */
  trace?: TraceCarrier;
}

export interface TaskLogEntry {
  taskId: string;
  node: string;
  ok: boolean;
  /** When the attempt became ready (readyAt then): from there to startedAt it waited. Absent in older records. */
  readyAt?: string;
  startedAt: string;
  finishedAt: string;
  modelMs: number;
  phases?: Record<string, number>;
  /** The input object this attempt found lost (corrupt or gone): the node was not at fault. */
  lostInput?: string;
}

/**
 * Task-log entries a record keeps. A section adds two (denoise, decode), so a job of up to ~120
 * sections keeps its whole log; a longer one (or one retried many times) keeps its latest.
 */
export const TASK_LOG_KEEP = 256;

/** Appends an attempt to the record's task log, dropping the oldest past TASK_LOG_KEEP. */
export function appendTaskLog(rec: JobRecord, entry: TaskLogEntry): void {
  const log = (rec.taskLog ??= []);
  log.push(entry);
  const over = log.length - TASK_LOG_KEEP;
  if (over > 0) {
    log.splice(0, over);
    rec.taskLogDropped = (rec.taskLogDropped ?? 0) + over;
  }
}

const records = jsonCodec<JobRecord>();
const enc = records.encode;
const dec = records.decode;

/** The job's record, or null if there is none or it is expiring (retention is removing it). */
export async function readJob(kv: KeyValue, jobId: string): Promise<{ record: JobRecord; revision: number } | null> {
  const r = await readJobIncludingExpiring(kv, jobId);
  return r === null || r.record.expiring !== undefined ? null : r;
}

/** The job's record even while it is expiring: for the retention sweep only. */
export async function readJobIncludingExpiring(
  kv: KeyValue,
  jobId: string,
): Promise<{ record: JobRecord; revision: number } | null> {
  const e = await kv.get(jobId);
  return e === null ? null : { record: dec(e.value), revision: e.revision };
}

/** Writes a new job's record; returns its revision. */
export async function createJob(kv: KeyValue, record: JobRecord): Promise<number> {
  return kv.create(record.spec.jobId, enc(record));
}

/** Per job, the last of this process's writes of its record, queued or running. */
const writing = new Map<string, Promise<unknown>>();

/**
 * Applies change to the job's latest record and writes it if no one else did in between;
 * retries on a lost race. Returns the record as written with its revision, or null if change
 * returned null. One write of a job's record at a time in this process: a clustered nats-server
 * 2.9 checks a write's expected revision against what it has stored, not against writes still in
 * flight, so two writes read at one revision and sent at once could both succeed, the second
 * undoing the first (seen after failovers: a task's recorded result lost to a task being queued).
 */
export async function updateJob(
  kv: KeyValue,
  jobId: string,
  change: (r: JobRecord) => JobRecord | null,
): Promise<{ record: JobRecord; revision: number } | null> {
  const run = (writing.get(jobId) ?? Promise.resolve()).then(() => writeJob(kv, jobId, change));
  const settled = run.catch(() => undefined);
  writing.set(jobId, settled);
  try {
    return await run;
  } finally {
    if (writing.get(jobId) === settled) writing.delete(jobId);
  }
}

async function writeJob(
  kv: KeyValue,
  jobId: string,
  change: (r: JobRecord) => JobRecord | null,
): Promise<{ record: JobRecord; revision: number } | null> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const cur = await readJob(kv, jobId);
    if (cur === null) throw new FarmError("NOT_FOUND", `job ${jobId} does not exist`);
    const next = change(structuredClone(cur.record));
    if (next === null) return null;
    next.updatedAt = new Date().toISOString();
    appendWebhookEvents(cur.record, next, next.updatedAt);
    try {
      return { record: next, revision: await kv.update(jobId, enc(next), cur.revision) };
    } catch (err) {
      if (!(err instanceof FarmError) || err.status !== "ABORTED") throw err;
    }
  }
  throw new FarmError("ABORTED", `job ${jobId}: too much contention updating its record`);
}
