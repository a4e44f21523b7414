/**
 * Job retention (`--retain-jobs`): a finished job (succeeded, failed or cancelled) is removed
 * retainMs after it ended (its record's last change), with everything kept under its id: its
 * objects (`jobs/<id>/`: inputs, previews, video...), its idempotency entry, its webhook delivery
 * cursor and its record (task log included). Node records of nodes gone for an hour go too.
 *
 * Only the dispatching leader sweeps (the dispatcher starts and stops this with its lease), every
 * everyMs, on its own timer: nothing here is awaited by dispatch. A pass reads the records, then
 * removes at most `batch` jobs, checking the lease before each; a pass that hit the batch is
 * followed by another at once.
 *
 * Removal order, so that a sweep killed anywhere is finished by the next one (this process's or
 * another leader's): first the record is marked `expiring`, by a revision-checked write that only
 * succeeds on a finished job past retention; then the objects, the idempotency entry and the
 * cursor; the record last. The mark comes first, rather than the objects, because from that write
 * on the job reads as absent everywhere (readJob: GetJob, ListJobs and WatchJob answer NOT_FOUND,
 * cancel and retry find nothing to change), so no reader ever sees a job whose video is half
 * deleted and no operator's retry can revive a job whose objects are going; and a pass takes every
 * marked record whatever its age, so a mark left by a killed sweep is finished.
 */
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { Logger } from "../../shared/log/logger.js";
import { jobPrefix } from "../../shared/farm/keys.js";
import { DRAIN_BUCKET, NODES_BUCKET, forgetGoneNodes } from "../../shared/nodes/node-registry.js";
import { IDEMPOTENCY_BUCKET, readJobIncludingExpiring, updateJob, type JobRecord } from "./job-record.js";
import { WEBHOOK_CURSORS_BUCKET } from "../webhooks/deliverer.js";

/** The default of `--retain-jobs`: a week, long enough that no one still waiting for a video loses it. */
export const DEFAULT_RETAIN_MS = 7 * 86_400_000;

export interface RetentionOptions {
  /** A finished job is removed this long after it ended (ms). */
  retainMs: number;
  /** A pass this often (ms); default a tenth of retainMs, within 1 s .. 60 s. */
  everyMs?: number;
  /** Jobs removed per pass at most (default 50). */
  batch?: number;
  log?: Logger;
}

/** Records read at once while looking for jobs to remove. */
const READ_AT_ONCE = 32;

const ended = (r: JobRecord): boolean => r.state === "SUCCEEDED" || r.state === "FAILED" || r.state === "CANCELLED";

export class JobSweeper {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private running: Promise<void> = Promise.resolve();
  private readonly everyMs: number;
  private readonly batch: number;

  private constructor(
    private readonly store: ObjectStore,
    private readonly jobs: KeyValue,
    private readonly idempotency: KeyValue,
    private readonly cursors: KeyValue,
    private readonly nodes: KeyValue,
    private readonly drains: KeyValue,
    private readonly o: RetentionOptions & { isLeader: () => boolean; onExpired: (jobId: string) => void },
  ) {
    this.everyMs = o.everyMs ?? Math.min(60_000, Math.max(1000, Math.round(o.retainMs / 10)));
    this.batch = o.batch ?? 50;
  }

  /** Starts sweeping: the first pass after everyMs. */
  static async start(
    bus: Bus,
    store: ObjectStore,
    jobs: KeyValue,
    o: RetentionOptions & { isLeader: () => boolean; onExpired: (jobId: string) => void },
  ): Promise<JobSweeper> {
    const s = new JobSweeper(
      store,
      jobs,
      await bus.kv(IDEMPOTENCY_BUCKET),
      await bus.kv(WEBHOOK_CURSORS_BUCKET),
      await bus.kv(NODES_BUCKET),
      await bus.kv(DRAIN_BUCKET),
      o,
    );
    s.schedule(s.everyMs);
    return s;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.sweep()
        .catch((err: unknown) => {
          // NATS or the store away: the next pass goes on where this one stopped.
          this.o.log?.warn({ err: (err as Error).message }, "retention sweep interrupted");
          return 0;
        })
        .then((removed) => this.schedule(removed >= this.batch ? 0 : this.everyMs));
    }, ms);
    this.timer.unref();
  }

  /** Whether the job is to be removed now: marked already, or finished more than retainMs ago. */
  private due(r: JobRecord, now: number): boolean {
    return r.expiring !== undefined || (ended(r) && now - Date.parse(r.updatedAt) >= this.o.retainMs);
  }

  /** One pass: removes up to `batch` jobs that are due; returns how many went. */
  async sweep(): Promise<number> {
    if (!this.o.isLeader()) return 0;
    const now = Date.now();
    const ids = await this.jobs.keys();
    const due: string[] = [];
    for (let i = 0; i < ids.length && due.length < this.batch; i += READ_AT_ONCE) {
      if (this.stopped || !this.o.isLeader()) return 0;
      const read = await Promise.all(
        ids.slice(i, i + READ_AT_ONCE).map((id) => readJobIncludingExpiring(this.jobs, id)),
      );
      for (const r of read) if (r !== null && this.due(r.record, now)) due.push(r.record.spec.jobId);
    }
    let removed = 0;
    for (const jobId of due.slice(0, this.batch)) {
      // The fence: a coordinator that lost the lease stops here (the next leader finishes).
      if (this.stopped || !this.o.isLeader()) break;
      if (await this.expire(jobId)) removed++;
    }
    if (removed > 0) this.o.log?.info({ removed, retainMs: this.o.retainMs }, "retention: finished jobs removed");
    if (!this.stopped && this.o.isLeader()) await forgetGoneNodes(this.nodes, this.drains, Date.now());
    return removed;
  }

  /** Removes one job (see the order above); false if it changed meanwhile and is not due any more. */
  private async expire(jobId: string): Promise<boolean> {
    const cur = await readJobIncludingExpiring(this.jobs, jobId);
    if (cur === null) return false;
    let record = cur.record;
    if (record.expiring === undefined) {
      const marked = await updateJob(this.jobs, jobId, (r) =>
        this.due(r, Date.now()) ? { ...r, expiring: new Date().toISOString() } : null,
      );
      if (marked === null) return false; // retried (running again) since it was read
      record = marked.record;
    }
    await this.store.deletePrefix(jobPrefix(jobId));
    const key = record.idempotencyKey;
    if (key !== undefined) {
      // Only while it still names this job (it always does: the key is free once this entry goes).
      const e = await this.idempotency.get(key);
      if (e !== null && new TextDecoder().decode(e.value) === jobId) await this.idempotency.delete(key);
    }
    if (record.webhook !== undefined) await this.cursors.delete(jobId);
    await this.jobs.delete(jobId);
    this.o.onExpired(jobId);
    return true;
  }

  /** Stops sweeping; a pass under way ends after the job in hand. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
