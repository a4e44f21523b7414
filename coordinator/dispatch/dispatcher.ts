/**
 * Advances jobs through their DAGs: a task is queued on its stage's work queue once its
 * dependencies are done, and a node's result (on the "results" queue) marks it done or failed.
 * State lives in the KV store, queues deduplicate by task id, so a restarted dispatcher resumes
 * every job and a duplicated result advances the DAG only once.
 */
import type { Bus, Consumer, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { jobPrefix, readyTasks, type StageKind, type StageTask } from "../planner/job-plan.js";
import { createJob, readJob, updateJob, type JobRecord } from "./job-record.js";
import type { JobSpec } from "../../shared/job/job-spec.js";

export const STAGE_KINDS: readonly StageKind[] = ["encode_text", "encode_image", "vae_encode", "denoise", "decode", "mux"];
export const RESULTS_QUEUE = "results";
export const JOBS_BUCKET = "jobs";

export interface TaskMessage {
  jobId: string;
  taskId: string;
}

export interface TaskResult {
  jobId: string;
  taskId: string;
  ok: boolean;
  error?: string;
  /** gRPC status name of the failure. */
  errorStatus?: string;
  node: string;
  /** When the node started and finished the task (ISO 8601). */
  startedAt?: string;
  finishedAt?: string;
  /** Of that time, milliseconds inside model execution (exact when the node runs one task at a time). */
  modelMs?: number;
}

/** Published by a node after each denoise step (not stored: live progress only). */
export interface StepEvent {
  jobId: string;
  taskId: string;
  section: number;
  step: number;
  steps: number;
}

export interface JobEvent {
  jobId: string;
  state: JobRecord["state"];
  done: number;
  total: number;
  taskId?: string;
}

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const dec = <T>(b: Uint8Array): T => JSON.parse(new TextDecoder().decode(b)) as T;

export const jobEventSubject = (jobId: string): string => `ff.events.job.${jobId}`;

export class Dispatcher {
  private consumer: Consumer | undefined;

  private constructor(
    private readonly bus: Bus,
    private readonly store: ObjectStore,
    private readonly kv: KeyValue,
    /** A task that failed this many times fails its job. */
    private readonly maxAttempts: number,
  ) {}

  static async start(bus: Bus, store: ObjectStore, options: { maxAttempts?: number } = {}): Promise<Dispatcher> {
    for (const q of [...STAGE_KINDS, RESULTS_QUEUE]) await bus.queues.ensure(q);
    const d = new Dispatcher(bus, store, await bus.kv(JOBS_BUCKET), options.maxAttempts ?? 3);
    d.consumer = await bus.queues.consume(RESULTS_QUEUE, { name: "dispatcher", ackWaitMs: 30_000, maxDeliver: 100 }, async (m) => {
      await d.onResult(dec<TaskResult>(m.data));
      m.ack();
    });
    // Resume: queue whatever is ready in every unfinished job (dedup makes this safe).
    for (const jobId of await d.kv.keys()) {
      const cur = await readJob(d.kv, jobId);
      if (cur !== null && (cur.record.state === "QUEUED" || cur.record.state === "RUNNING")) await d.queueReady(jobId);
    }
    return d;
  }

  async submit(spec: JobSpec, tasks: StageTask[]): Promise<void> {
    const now = new Date().toISOString();
    await createJob(this.kv, {
      spec,
      state: "QUEUED",
      tasks,
      taskStates: Object.fromEntries(tasks.map((t) => [t.id, "pending" as const])),
      attempts: {},
      createdAt: now,
      updatedAt: now,
    });
    await this.queueReady(spec.jobId);
  }

  async job(jobId: string): Promise<JobRecord | null> {
    return (await readJob(this.kv, jobId))?.record ?? null;
  }

  private publish(r: JobRecord, taskId?: string): void {
    const done = Object.values(r.taskStates).filter((s) => s === "done").length;
    const event: JobEvent = { jobId: r.spec.jobId, state: r.state, done, total: r.tasks.length, ...(taskId !== undefined ? { taskId } : {}) };
    this.bus.events.publish(jobEventSubject(r.spec.jobId), enc(event));
  }

  /** Marks the job's newly ready tasks queued (inside a record update) and returns them. */
  private static markReady(rec: JobRecord): StageTask[] {
    const done = new Set(Object.entries(rec.taskStates).filter(([, s]) => s === "done").map(([id]) => id));
    const busy = new Set(Object.entries(rec.taskStates).filter(([, s]) => s !== "pending").map(([id]) => id));
    const ready = readyTasks(rec.tasks, done, busy);
    for (const t of ready) rec.taskStates[t.id] = "queued";
    return ready;
  }

  private async enqueue(jobId: string, tasks: Iterable<StageTask>): Promise<void> {
    for (const t of tasks) await this.bus.queues.enqueue(t.kind, enc({ jobId, taskId: t.id } satisfies TaskMessage), t.id);
  }

  private async queueReady(jobId: string): Promise<void> {
    await updateJob(this.kv, jobId, (rec) => {
      if (rec.state !== "QUEUED" && rec.state !== "RUNNING") return null;
      Dispatcher.markReady(rec);
      return rec;
    });
    // Queue every task marked queued, also those of an earlier run that died before enqueueing:
    // the queue's dedup window drops true duplicates.
    const record = (await readJob(this.kv, jobId))?.record;
    if (record === undefined || (record.state !== "QUEUED" && record.state !== "RUNNING")) return;
    await this.enqueue(jobId, record.tasks.filter((t) => record.taskStates[t.id] === "queued"));
  }

  /**
   * Cancels a job that has not ended and removes its objects (a cancelled job keeps nothing).
   * Nodes working on it notice within their lease interval and stop. Returns null if it had ended.
   */
  async cancel(jobId: string): Promise<JobRecord | null> {
    const r = await updateJob(this.kv, jobId, (rec) => (rec.state === "QUEUED" || rec.state === "RUNNING" ? { ...rec, state: "CANCELLED" } : null));
    if (r !== null) {
      await this.store.deletePrefix(jobPrefix(jobId));
      this.publish(r);
    }
    return r;
  }

  private async onResult(result: TaskResult): Promise<void> {
    let cancelled = false;
    let ready: StageTask[] = [];
    // One revision-checked write records the result and marks what became ready.
    const r = await updateJob(this.kv, result.jobId, (rec) => {
      ready = [];
      cancelled = rec.state === "CANCELLED";
      if (rec.taskStates[result.taskId] === "done" || (rec.state !== "QUEUED" && rec.state !== "RUNNING")) return null;
      rec.attempts[result.taskId] = (rec.attempts[result.taskId] ?? 0) + 1;
      if (result.startedAt !== undefined && result.finishedAt !== undefined) {
        (rec.taskLog ??= []).push({ taskId: result.taskId, node: result.node, ok: result.ok, startedAt: result.startedAt, finishedAt: result.finishedAt, modelMs: result.modelMs ?? 0 });
      }
      if (result.ok) {
        rec.taskStates[result.taskId] = "done";
        rec.state = Object.values(rec.taskStates).every((s) => s === "done") ? "SUCCEEDED" : "RUNNING";
      } else if (rec.attempts[result.taskId]! >= this.maxAttempts) {
        rec.taskStates[result.taskId] = "failed";
        rec.state = "FAILED";
        rec.error = `${result.taskId} failed ${rec.attempts[result.taskId]} times; last on ${result.node}: ${result.error ?? "unknown error"}`;
        rec.errorStatus = result.errorStatus ?? "INTERNAL";
      }
      if (rec.state === "RUNNING") ready = Dispatcher.markReady(rec);
      return rec;
    });
    if (cancelled) {
      // A task that was running at cancellation may have written outputs after the clean-up.
      await this.store.deletePrefix(jobPrefix(result.jobId));
      return;
    }
    if (r === null) return;
    this.publish(r, result.taskId);
    if (r.state !== "RUNNING") return;
    if (!result.ok) {
      // Not yet out of attempts: put the task back on its queue.
      const t = r.tasks.find((x) => x.id === result.taskId)!;
      await this.bus.queues.enqueue(t.kind, enc({ jobId: result.jobId, taskId: t.id } satisfies TaskMessage), `${t.id}#${r.attempts[t.id]}`);
    }
    await this.enqueue(result.jobId, ready);
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }
}
