/**
 * A job's state as stored in the bus KV (bucket "jobs", one key per job): the spec, the planned
 * tasks and each task's state. Every change is a revision-checked update, so two coordinators (or
 * a restarted one) can never both advance the same job.
 */
import { FarmError } from "../../shared/errors.js";
import type { KeyValue } from "../../shared/bus/bus.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import type { StageTask } from "../planner/job-plan.js";

export type JobState = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED";
export type TaskState = "pending" | "queued" | "done" | "failed";

export interface JobRecord {
  spec: JobSpec;
  state: JobState;
  tasks: StageTask[];
  taskStates: Record<string, TaskState>;
  attempts: Record<string, number>;
  error?: string;
  errorStatus?: string;
  /** Every attempt's node and time span, in the order results arrived (the job's event log). */
  taskLog?: { taskId: string; node: string; ok: boolean; startedAt: string; finishedAt: string; modelMs: number }[];
  createdAt: string;
  updatedAt: string;
}

const enc = (r: JobRecord): Uint8Array => new TextEncoder().encode(JSON.stringify(r));
const dec = (b: Uint8Array): JobRecord => JSON.parse(new TextDecoder().decode(b)) as JobRecord;

export async function readJob(kv: KeyValue, jobId: string): Promise<{ record: JobRecord; revision: number } | null> {
  const e = await kv.get(jobId);
  return e === null ? null : { record: dec(e.value), revision: e.revision };
}

export async function createJob(kv: KeyValue, record: JobRecord): Promise<void> {
  await kv.create(record.spec.jobId, enc(record));
}

/**
 * Applies change to the job's latest record and writes it if no one else did in between;
 * retries on a lost race. Returns the record as written, or null if change returned null.
 */
export async function updateJob(kv: KeyValue, jobId: string, change: (r: JobRecord) => JobRecord | null): Promise<JobRecord | null> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const cur = await readJob(kv, jobId);
    if (cur === null) throw new FarmError("NOT_FOUND", `job ${jobId} does not exist`);
    const next = change(structuredClone(cur.record));
    if (next === null) return null;
    next.updatedAt = new Date().toISOString();
    try {
      await kv.update(jobId, enc(next), cur.revision);
      return next;
    } catch (err) {
      if (!(err instanceof FarmError) || err.status !== "ABORTED") throw err;
    }
  }
  throw new FarmError("ABORTED", `job ${jobId}: too much contention updating its record`);
}
