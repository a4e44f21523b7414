/**
 * Advances jobs through their DAGs. A task whose dependencies are done becomes ready; the
 * dispatcher holds ready tasks and releases one onto its stage's work queue only when a node is
 * idle there, asking for work, best first (priority, then tenants in turn, then job age). So the choice of what runs
 * next is made at the last moment, and a high-priority job overtakes any backlog. A node's result (on the "results" queue) marks its task done or sends
 * it back for another attempt. State lives in the KV store and queues deduplicate by task attempt,
 * so a restarted dispatcher resumes every job and a duplicated result advances the DAG only once.
 *
 * With a lease (several coordinators on one farm) only the lease holder consumes results and
 * releases tasks; every dispatcher writes submissions, cancels and retries, and tells the others
 * of each write on RECORD_WRITTEN_SUBJECT so the holder's held set (and everyone's per-tenant
 * counts) follow. A task is marked queued by a revision-checked write before it is enqueued under
 * its attempt's dedup id, so two holders overlapping for a moment cannot queue one attempt twice.
 */
import type { Bus, Consumer, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { readyTasks } from "../planner/job-plan.js";
import { intermediatePrefixes, jobPrefix } from "../../shared/farm/keys.js";
import {
  JOBS_BUCKET,
  RESULTS_QUEUE,
  STAGE_KINDS,
  jobStateSubject,
  jobEvents,
  taskMessages,
  taskResults,
  type JobEvent,
  type StageKind,
  type StageTask,
  type TaskMessage,
  type TaskResult,
} from "../../shared/farm/protocol.js";
import { appendTaskLog, createJob, readJob, updateJob, type JobRecord } from "./job-record.js";
import { JobSweeper, type RetentionOptions } from "./job-sweeper.js";
import { ReadySet } from "./ready-set.js";
import { applyLostInput, decideLostInput, waitsForRecompute } from "./recompute.js";
import { tenantOf } from "./job-views.js";
import { appendQueuedEvent } from "../webhooks/events.js";
import { FarmError } from "../../shared/errors.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { silentLogger, type Logger } from "../../shared/log/logger.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import { COORDINATOR_BUCKET, LeaderLease } from "./leader-lease.js";
import { SpanKind, type Span } from "@opentelemetry/api";
import {
  TRACE_ATTRS,
  contextOf,
  recordFailure,
  spanCarrier,
  tracer,
  type TraceCarrier,
} from "../../shared/telemetry/tracing.js";

/**
 * The queue message for a task: the task and its job's spec, with the nodes that already failed
 * it, if any, and the trace context of the span that dispatches it.
 */
export function taskMessage(r: JobRecord, taskId: string, trace?: TraceCarrier): TaskMessage {
  // Records written before avoidNodes existed name the failed nodes in their (then whole) task log.
  const failed =
    r.avoidNodes !== undefined
      ? (r.avoidNodes[taskId] ?? [])
      : (r.taskLog ?? [])
          .filter((e) => e.taskId === taskId && !e.ok)
          .slice(r.attemptsBeforeRetry?.[taskId] ?? 0)
          .filter((e) => e.lostInput === undefined) // the store lost an input: not the node's fault
          .map((e) => e.node);
  const task = r.tasks.find((t) => t.id === taskId);
  if (task === undefined) throw new FarmError("INTERNAL", `job ${r.spec.jobId} has no task ${taskId}`);
  return {
    jobId: r.spec.jobId,
    taskId,
    task,
    spec: r.spec,
    ...(failed.length > 0 ? { avoidNodes: [...new Set(failed)] } : {}),
    ...(trace !== undefined ? { trace } : {}),
  };
}

/**
 * The span of one dispatch of a task (its message carries the span's context to the node): a
 * child of the job's SubmitJob span, which the record keeps, whichever coordinator dispatches.
 */
function dispatchSpan(r: JobRecord, task: StageTask, resumed = false): Span {
  return tracer().startSpan(
    `dispatch ${task.kind}`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        [TRACE_ATTRS.jobId]: r.spec.jobId,
        [TRACE_ATTRS.taskId]: task.id,
        [TRACE_ATTRS.stage]: task.kind,
        ...(task.section !== undefined ? { [TRACE_ATTRS.section]: task.section } : {}),
        [TRACE_ATTRS.attempt]: (r.attempts[task.id] ?? 0) + 1,
        ...(resumed ? { [TRACE_ATTRS.resumed]: true } : {}),
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": task.kind,
      },
    },
    contextOf(r.trace),
  );
}

/**
 * The span of the coordinator taking in a node's result: a child of the node's span of the task,
 * or of the job's when the node does not trace.
 */
function resultSpan(result: TaskResult, r: JobRecord | undefined, startTime: number): Span {
  const task = r?.tasks.find((t) => t.id === result.taskId);
  return tracer().startSpan(
    `result ${task?.kind ?? "task"}`,
    {
      kind: SpanKind.CONSUMER,
      startTime,
      attributes: {
        [TRACE_ATTRS.jobId]: result.jobId,
        [TRACE_ATTRS.taskId]: result.taskId,
        [TRACE_ATTRS.nodeId]: result.node,
        ...(task !== undefined ? { [TRACE_ATTRS.stage]: task.kind } : {}),
        ...(task?.section !== undefined ? { [TRACE_ATTRS.section]: task.section } : {}),
        [TRACE_ATTRS.outcome]: result.ok ? "done" : "failed",
      },
    },
    contextOf(result.trace ?? r?.trace),
  );
}

/** Sends a task's message under its dispatch span. */
async function traced(span: Span, send: () => Promise<void>): Promise<void> {
  try {
    await send();
  } catch (err) {
    recordFailure(span, err);
    throw err;
  } finally {
    span.end();
  }
}

export interface DispatcherOptions {
  /** A task that failed this many times fails its job. */
  maxAttempts?: number;
  /** Held tasks are offered again this often even without a result, in ms (nodes that joined or fell idle). */
  tickMs?: number;
  /** Called after each write of a job's record (the webhook deliverer listens); must not block. */
  onRecord?: (jobId: string) => void;
  /**
   * Dispatch only while holding the farm's leader lease (coordinator/dispatch/leader-lease.ts);
   * without one this dispatcher always dispatches (one coordinator, embedded mode).
   */
  lease?: { holder: string; ttlMs: number; log?: Logger };
  /** Called when this dispatcher starts (true) or stops (false) dispatching under the lease. */
  onLeader?: (leading: boolean) => void;
  /** With a lease: every unfinished job is read again this often, in case a record note was missed (ms). */
  resyncMs?: number;
  /**
   * The most tasks of one tenant on the stage queues or running at once (unlimited when absent):
   * the tenant's other ready tasks wait while other tenants' go, so one tenant's flood cannot take
   * every node. Nodes stay idle rather than exceed it.
   */
  maxRunningPerTenant?: number;
  /** Remove finished jobs after this long (coordinator/dispatch/job-sweeper.ts); kept for good when absent. */
  retention?: RetentionOptions;
  /** How often the stage queues are checked for stranded task messages (WorkQueues.requeueStranded), in ms. */
  strandedCheckMs?: number;
  /** Where the dispatcher says what it queued (debug) and what it queued again and why (info). */
  log?: Logger;
}

/** A tenant's share of the farm now, as the dispatcher mirrors it (per-tenant metrics). */
export interface TenantLoad {
  queuedJobs: number;
  runningJobs: number;
  /** Tasks on a stage queue or running on a node. */
  runningTasks: number;
  /** Ready tasks held back for a free node (or for the tenant's running limit). */
  waitingTasks: number;
}

/**
 * The results queue's ack wait. A coordinator keeps the result it is handling in hand with
 * in-progress acks at a third of this; one that dies while handling it (SIGKILL, a lost machine)
 * leaves it taken and unacknowledged, and the next leader gets it only when this runs out. No
 * longer than the default lease TTL, so it is back by the time a follower takes over (at 30 s,
 * every such restart stood still for 30 s).
 */
export const DISPATCHER_RESULTS_ACK_WAIT_MS = 5000;

/** Core NATS subject on which a dispatcher under a lease names each job record it wrote. */
export const RECORD_WRITTEN_SUBJECT = "ff.coordinator.record-written";
const recordNotes = jsonCodec<{ jobId: string; from: string }>();

export const PRIORITY_RANGE = { min: -1000, max: 1000 } as const;

/** A job's priority: higher runs first. The one check, for submissions and changes alike. */
export function checkPriority(priority: number): number {
  if (!Number.isInteger(priority) || priority < PRIORITY_RANGE.min || priority > PRIORITY_RANGE.max) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `priority must be an integer from ${PRIORITY_RANGE.min} to ${PRIORITY_RANGE.max}, got ${priority}`,
    );
  }
  return priority;
}

const active = (r: JobRecord): boolean => r.state === "QUEUED" || r.state === "RUNNING";

/** The queue's dedup id for one attempt of a task: attempts, operator retries and recomputations make it new. */
const dedupId = (r: JobRecord, taskId: string): string => {
  const recomputed = r.recomputes?.[taskId] ?? 0;
  return `${taskId}#${r.retries ?? 0}.${r.attempts[taskId] ?? 0}${recomputed > 0 ? `.r${recomputed}` : ""}`;
};

/** Marks the job's tasks whose dependencies are done ready (inside a record update). */
function markReady(rec: JobRecord): void {
  const done = new Set(
    Object.entries(rec.taskStates)
      .filter(([, s]) => s === "done")
      .map(([id]) => id),
  );
  const started = new Set(
    Object.entries(rec.taskStates)
      .filter(([, s]) => s !== "pending")
      .map(([id]) => id),
  );
  const now = new Date().toISOString();
  for (const t of readyTasks(rec.tasks, done, started)) {
    if (waitsForRecompute(rec, t.id, done)) continue;
    rec.taskStates[t.id] = "ready";
    (rec.readyAt ??= {})[t.id] = now;
  }
}

export class Dispatcher {
  private consumer: Consumer | undefined;
  private readonly ready = new ReadySet();
  /** Latest record revision mirrored into `ready`, per job, so a late write never undoes a newer one. */
  private readonly mirrored = new Map<string, number>();
  /** Every unfinished job (queued or running) mirrored: its tenant, state and tasks sent out. */
  private readonly unfinished = new Map<string, { tenant: string; state: JobRecord["state"]; running: number }>();
  private readonly maxRunningPerTenant: number | undefined;
  private releasing: Promise<void> = Promise.resolve();
  private releaseRequested = false;
  private tick: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Results being handled right now, and since when release passes have waited for results. */
  private handlingResults = 0;
  private deferredSince: number | undefined;
  /** Per stage, workers that just reported a result and are about to ask for more (their pull may not show yet). */
  private freed = new Map<StageKind, number>();
  /** Tasks marked queued whose enqueue failed (the bus was away): sent again, first thing, by the next pass. */
  private unsent: { kind: StageKind; data: Uint8Array; dedupId: string }[] = [];
  private readonly maxAttempts: number;
  private readonly log: Logger;
  private readonly onRecord: ((jobId: string) => void) | undefined;
  private lease: LeaderLease | undefined;
  /** Whether the dispatching parts (results consumer, release ticks) run now. */
  private dispatching = false;
  private transition: Promise<void> = Promise.resolve();
  private unsubscribe: (() => void) | undefined;
  private resync: NodeJS.Timeout | undefined;
  private resyncs = 0;
  /** Runs while this dispatcher leads, with retention on. */
  private sweeper: JobSweeper | undefined;
  private strandedCheck: NodeJS.Timeout | undefined;
  private checkingStranded = false;
  /** Task messages found stranded on a stage queue (its consumer would never hand them out) and queued again. */
  strandedRequeued = 0;
  /** Results found stranded on the results queue and handed in again. */
  strandedResultsRequeued = 0;
  /** Queued tasks found in no queue by the last check (resendLost). */
  private lostSeen = new Set<string>();

  private constructor(
    private readonly bus: Bus,
    private readonly store: ObjectStore,
    private readonly kv: KeyValue,
    options: DispatcherOptions,
  ) {
    this.maxAttempts = options.maxAttempts ?? 3;
    this.onRecord = options.onRecord;
    this.maxRunningPerTenant = options.maxRunningPerTenant;
    this.log = options.log ?? options.lease?.log ?? silentLogger();
  }

  static async start(bus: Bus, store: ObjectStore, options: DispatcherOptions = {}): Promise<Dispatcher> {
    for (const q of [...STAGE_KINDS, RESULTS_QUEUE]) await bus.queues.ensure(q);
    const d = new Dispatcher(bus, store, await bus.kv(JOBS_BUCKET), options);
    const lease = options.lease;
    if (lease === undefined) {
      await d.lead(options);
      return d;
    }
    d.unsubscribe = bus.events.subscribe(RECORD_WRITTEN_SUBJECT, (_s, data) => {
      const note = recordNotes.decode(data);
      if (note.from !== lease.holder) void d.follow(note.jobId).catch(() => undefined); // the periodic resync catches up
    });
    // Everyone counts unfinished jobs (per-tenant limits), leader or not.
    for (const jobId of await d.kv.keys()) await d.follow(jobId);
    d.resync = setInterval(() => void d.resyncAll().catch(() => undefined), options.resyncMs ?? 10_000);
    d.resync.unref();
    d.lease = new LeaderLease(await bus.kv(COORDINATOR_BUCKET), {
      ...lease,
      onChange: (leading) => {
        d.transition = d.transition.then(async () => {
          try {
            if (leading) await d.lead(options);
            else await d.standDown();
            options.onLeader?.(leading);
          } catch (err) {
            // The bus went away while taking over: stand down and try again while the lease holds.
            lease.log?.error({ err: (err as Error).message }, "taking over failed; trying again");
            await d.standDown().catch(() => undefined);
            setTimeout(() => d.lease?.isLeader() && !d.stopped && d.lease.retake(), 1000).unref();
          }
        });
      },
    });
    await d.lease.start();
    await d.transition;
    return d;
  }

  /** Whether this dispatcher may dispatch now: no lease, or the lease held and in date. */
  get leader(): boolean {
    return this.lease === undefined || this.lease.isLeader();
  }

  /** Mirrors the job's current record (another coordinator wrote it), or forgets a job that is gone. */
  private async follow(jobId: string): Promise<void> {
    const cur = await readJob(this.kv, jobId);
    if (cur === null) return this.forget(jobId);
    this.mirror(cur.record, cur.revision);
    this.requestRelease();
  }

  /** Drops everything held about a job that no longer exists (retention removed it). */
  private forget(jobId: string): void {
    this.mirrored.delete(jobId);
    this.unfinished.delete(jobId);
    this.ready.deleteJob(jobId);
  }

  /**
   * Reads again every unfinished job; every sixth time also lists the bucket for jobs not seen yet
   * (a lost note of a new job; listing reads every key, so not each time).
   */
  private async resyncAll(): Promise<void> {
    const listing = this.resyncs++ % 6 === 5;
    const ids = listing ? await this.kv.keys() : [...this.unfinished.keys()];
    for (const jobId of ids) if (this.unfinished.has(jobId) || !this.mirrored.has(jobId)) await this.follow(jobId);
  }

  /** Starts dispatching: resumes every unfinished job from the store, then consumes results. */
  private async lead(options: DispatcherOptions): Promise<void> {
    if (this.dispatching || this.stopped || !this.leader) return;
    // Resume every unfinished job: hold its ready tasks again, and queue again what was queued
    // (the queue's dedup window drops true duplicates; a task run twice writes nothing new).
    // Not what a queue still holds, or whose result waits: a clustered stream whose leader changed
    // has forgotten the dedup ids of the messages already taken off it. Done before anything else
    // here queues tasks or takes results, which would make that look stale at once.
    const inQueues = await this.storedTasks();
    for (const jobId of await this.kv.keys()) {
      const cur = await readJob(this.kv, jobId);
      if (cur === null || !active(cur.record)) continue;
      const w = await updateJob(this.kv, jobId, (rec) => (active(rec) ? (markReady(rec), rec) : null));
      if (w === null) continue;
      this.wrote(w);
      for (const t of w.record.tasks) {
        if (w.record.taskStates[t.id] !== "queued" || !this.leader || inQueues.has(`${jobId}/${t.id}`)) continue;
        this.log.info({ taskId: t.id, dedupId: dedupId(w.record, t.id) }, "taking over: task queued again");
        const span = dispatchSpan(w.record, t, true);
        await traced(span, () =>
          this.bus.queues.enqueue(
            t.kind,
            taskMessages.encode(taskMessage(w.record, t.id, spanCarrier(span))),
            dedupId(w.record, t.id),
          ),
        );
      }
    }
    if (this.stopped || !this.leader) return;
    this.dispatching = true;
    this.consumer = await this.bus.queues.consume(
      RESULTS_QUEUE,
      { name: "dispatcher", ackWaitMs: DISPATCHER_RESULTS_ACK_WAIT_MS, maxDeliver: 100 },
      async (m) => {
        this.handlingResults++;
        // Kept in hand while handled (a record write, the clean-up of a finished job's objects).
        const keep = setInterval(() => m.working(), DISPATCHER_RESULTS_ACK_WAIT_MS / 3);
        try {
          const kind = await this.onResult(taskResults.decode(m.data));
          if (kind !== undefined) this.freed.set(kind, (this.freed.get(kind) ?? 0) + 1);
          m.ack();
        } catch (err) {
          // Handed back (nak), to be handled again: said, so a result that keeps failing shows.
          this.log.warn({ err: (err as Error).message, delivery: m.attempt }, "handling a result failed; handed back");
          throw err;
        } finally {
          clearInterval(keep);
          this.handlingResults--;
        }
        this.requestRelease();
      },
    );
    this.tick = setInterval(() => this.requestRelease(), options.tickMs ?? 250);
    this.tick.unref();
    if (this.bus.queues.requeueStranded !== undefined) {
      this.strandedCheck = setInterval(() => void this.requeueStranded(), options.strandedCheckMs ?? 5_000);
      this.strandedCheck.unref();
    }
    this.requestRelease();
    if (options.retention !== undefined)
      this.sweeper = await JobSweeper.start(this.bus, this.store, this.kv, {
        ...options.retention,
        isLeader: () => this.dispatching && this.leader,
        onExpired: (jobId) => {
          this.forget(jobId);
          // Followers forget it too (their read finds no record).
          if (this.lease !== undefined)
            this.bus.events.publish(RECORD_WRITTEN_SUBJECT, recordNotes.encode({ jobId, from: this.lease.holder }));
        },
      });
  }

  /**
   * A task queued here whose message no queue stores and whose result is not waiting either, seen
   * so twice in a row, was lost by the server (a clustered stream's leader killed): it is queued
   * again (a new message; its id differs from the lost one's, which the queue may remember).
   */
  private async resendLost(): Promise<void> {
    const inQueues = await this.storedTasks();
    const seen = new Set<string>();
    for (const jobId of [...this.unfinished.keys()]) {
      const cur = await readJob(this.kv, jobId);
      if (cur === null || !active(cur.record)) continue;
      for (const t of cur.record.tasks) {
        const key = `${jobId}/${t.id}`;
        if (cur.record.taskStates[t.id] !== "queued" || inQueues.has(key)) continue;
        seen.add(key);
        if (!this.lostSeen.has(key) || !this.dispatching || !this.leader) continue;
        this.log.info({ taskId: t.id }, "task queued but in no queue, twice: queued again");
        await this.bus.queues.enqueue(
          t.kind,
          taskMessages.encode(taskMessage(cur.record, t.id)),
          `${dedupId(cur.record, t.id)}.lost-${Date.now()}`,
        );
        this.strandedRequeued++;
        seen.delete(key);
      }
    }
    this.lostSeen = seen;
  }

  /** `jobId/taskId` of every task message the stage queues store and every result waiting (NATS only). */
  private async storedTasks(): Promise<Set<string>> {
    const found = new Set<string>();
    const stored = this.bus.queues.stored?.bind(this.bus.queues);
    if (stored === undefined) return found;
    for (const kind of STAGE_KINDS)
      for (const m of await stored(kind)) {
        const t = taskMessages.decode(m.data);
        found.add(`${t.jobId}/${t.taskId}`);
      }
    for (const m of await stored(RESULTS_QUEUE)) {
      const r = taskResults.decode(m.data);
      found.add(`${r.jobId}/${r.taskId}`);
    }
    return found;
  }

  /**
   * A task message its queue still stores but will never hand out (a clustered nats-server's
   * consumer that lost it in a leader change) is queued again if its task is still queued here
   * (a new message: the dedup window remembers the old id), else just removed.
   */
  private async requeueStranded(): Promise<void> {
    const requeue = this.bus.queues.requeueStranded?.bind(this.bus.queues);
    if (requeue === undefined || this.checkingStranded) return;
    this.checkingStranded = true;
    try {
      for (const kind of STAGE_KINDS) {
        if (!this.dispatching || !this.leader) return;
        const { requeued } = await requeue(kind, async (data) => {
          const msg = taskMessages.decode(data);
          const cur = await readJob(this.kv, msg.jobId);
          const again =
            this.leader && cur !== null && active(cur.record) && cur.record.taskStates[msg.taskId] === "queued";
          if (again) this.log.info({ taskId: msg.taskId }, "stranded task message queued again");
          return again;
        });
        this.strandedRequeued += requeued;
      }
      // A stranded result is handed in again too: a result for a task already done is ignored.
      if (this.dispatching && this.leader)
        this.strandedResultsRequeued += (await requeue(RESULTS_QUEUE, () => Promise.resolve(true))).requeued;
      await this.resendLost();
    } catch {
      // The bus is away: the next check tries again.
    } finally {
      this.checkingStranded = false;
    }
  }

  /** Stops dispatching (the lease is gone): no more releases, results are left to the new leader. */
  private async standDown(): Promise<void> {
    if (!this.dispatching) return;
    this.dispatching = false;
    clearInterval(this.tick);
    await this.sweeper?.stop();
    this.sweeper = undefined;
    clearInterval(this.strandedCheck);
    await this.consumer?.stop();
    this.consumer = undefined;
    await this.releasing;
    // Marked queued, so they must reach the queue: a new leader that read the job before the mark
    // holds them as ready and cannot mark them again (same dedup ids: no duplicates either way).
    for (const u of this.unsent.splice(0))
      await this.bus.queues.enqueue(u.kind, u.data, u.dedupId).catch(() => undefined);
    this.freed = new Map();
  }

  /** Mirrors a record this dispatcher wrote and, under a lease, tells the other coordinators. */
  private wrote(w: { record: JobRecord; revision: number }): void {
    this.mirror(w.record, w.revision);
    if (this.lease !== undefined)
      this.bus.events.publish(
        RECORD_WRITTEN_SUBJECT,
        recordNotes.encode({ jobId: w.record.spec.jobId, from: this.lease.holder }),
      );
  }

  async submit(
    spec: JobSpec,
    tasks: StageTask[],
    options: {
      priority?: number;
      webhook?: { url: string; tenant: string };
      idempotencyKey?: string;
      trace?: TraceCarrier;
    } = {},
  ): Promise<JobRecord> {
    const priority = options.priority ?? 0;
    checkPriority(priority);
    const now = new Date().toISOString();
    const record: JobRecord = {
      spec,
      state: "QUEUED",
      tasks,
      taskStates: Object.fromEntries(tasks.map((t) => [t.id, "pending" as const])),
      attempts: {},
      avoidNodes: {},
      priority,
      createdAt: now,
      updatedAt: now,
      ...(options.webhook !== undefined ? { webhook: { ...options.webhook, events: [] } } : {}),
      ...(options.idempotencyKey !== undefined ? { idempotencyKey: options.idempotencyKey } : {}),
      ...(options.trace !== undefined ? { trace: options.trace } : {}),
    };
    appendQueuedEvent(record, now);
    markReady(record);
    this.wrote({ record, revision: await createJob(this.kv, record) });
    this.requestRelease();
    return record;
  }

  async job(jobId: string): Promise<JobRecord | null> {
    return (await readJob(this.kv, jobId))?.record ?? null;
  }

  /** How many jobs of the tenant are queued or running (the per-tenant limit counts these). */
  unfinishedJobs(tenant: string): number {
    let n = 0;
    for (const j of this.unfinished.values()) if (j.tenant === tenant) n++;
    return n;
  }

  /** Tasks of the tenant on a stage queue or running (the running limit counts these). */
  runningTasks(tenant: string): number {
    let n = 0;
    for (const j of this.unfinished.values()) if (j.tenant === tenant) n += j.running;
    return n;
  }

  /** Each tenant with unfinished jobs: its jobs and tasks by state. */
  tenantLoad(): Map<string, TenantLoad> {
    const out = new Map<string, TenantLoad>();
    const of = (tenant: string): TenantLoad => {
      let l = out.get(tenant);
      if (l === undefined) out.set(tenant, (l = { queuedJobs: 0, runningJobs: 0, runningTasks: 0, waitingTasks: 0 }));
      return l;
    };
    for (const j of this.unfinished.values()) {
      const l = of(j.tenant);
      if (j.state === "QUEUED") l.queuedJobs++;
      else l.runningJobs++;
      l.runningTasks += j.running;
    }
    for (const [tenant, n] of this.ready.perTenant()) of(tenant).waitingTasks += n;
    return out;
  }

  /** Ready tasks held back for want of room on their stage queue (all stages, or one). */
  held(kind?: StageKind): number {
    return this.ready.size(kind);
  }

  private publish(r: JobRecord, taskId?: string): void {
    const done = Object.values(r.taskStates).filter((s) => s === "done").length;
    const event: JobEvent = {
      jobId: r.spec.jobId,
      state: r.state,
      done,
      total: r.tasks.length,
      ...(taskId !== undefined ? { taskId } : {}),
    };
    this.bus.events.publish(jobStateSubject(r.spec.jobId), jobEvents.encode(event));
  }

  /** Makes the held set agree with a record this dispatcher wrote (or read at start). */
  private mirror(r: JobRecord, revision: number): void {
    const jobId = r.spec.jobId;
    if (r.webhook !== undefined && this.leader) this.onRecord?.(jobId);
    if ((this.mirrored.get(jobId) ?? -1) > revision) return;
    this.mirrored.set(jobId, revision);
    this.ready.deleteJob(jobId);
    if (!active(r)) return void this.unfinished.delete(jobId);
    const tenant = tenantOf(r);
    const running = Object.values(r.taskStates).filter((s) => s === "queued").length;
    this.unfinished.set(jobId, { tenant, state: r.state, running });
    const createdAt = Date.parse(r.createdAt);
    r.tasks.forEach((t, order) => {
      if (r.taskStates[t.id] === "ready")
        this.ready.add({ jobId, taskId: t.id, kind: t.kind, tenant, priority: r.priority ?? 0, createdAt, order });
    });
  }

  /** Runs a release pass after the one in progress (at most one waits). */
  private requestRelease(): void {
    if (this.releaseRequested || this.stopped || !this.dispatching) return;
    this.releaseRequested = true;
    this.releasing = this.releasing.then(async () => {
      this.releaseRequested = false;
      if (this.stopped || !this.dispatching) return;
      try {
        await this.releasePass();
      } catch {
        // The bus is away (a NATS restart): the next tick tries again.
      }
    });
  }

  /** Gives each idle node the best held task of its stage. */
  private async releasePass(): Promise<void> {
    // Same dedup ids: a send that did reach the queue before its answer was lost is dropped there;
    // a clustered stream whose leader changed since forgot the id, so what the queues hold (or what
    // has a result already) is not sent again.
    if (this.unsent.length > 0) {
      const inQueues = await this.storedTasks();
      while (this.unsent.length > 0) {
        if (!this.leader) return;
        const u = this.unsent[0]!;
        const { jobId, taskId } = taskMessages.decode(u.data);
        const cur = await readJob(this.kv, jobId);
        const again = !inQueues.has(`${jobId}/${taskId}`) && cur !== null && cur.record.taskStates[taskId] === "queued";
        this.log.info({ taskId, dedupId: u.dedupId, again }, "a send that failed: sent again unless stored");
        if (again) await this.bus.queues.enqueue(u.kind, u.data, u.dedupId);
        this.unsent.shift();
      }
    }
    let resultsChecked = false;
    const limit = this.maxRunningPerTenant;
    // Tenants at their running limit wait: their tasks are passed over (counted afresh after each send).
    const atLimit = limit === undefined ? undefined : (tenant: string): boolean => this.runningTasks(tenant) >= limit;
    // Credits for workers that just finished last only this pass: at most one task ever waits for a worker.
    const freed = this.freed;
    this.freed = new Map();
    for (const kind of this.ready.kinds()) {
      const { waiting, idleWorkers } = await this.bus.queues.stats(kind);
      let room = Math.max(idleWorkers, freed.get(kind) ?? 0) - waiting;
      if (room <= 0) continue;
      if (!resultsChecked) {
        // A node reports its result before it asks for work, so with the idle node seen first, its
        // result is now waiting or in hand: decide once it is in (it may make a better task
        // ready), unless results have kept coming for a while.
        const pending = this.handlingResults > 0 || (await this.bus.queues.stats(RESULTS_QUEUE)).waiting > 0;
        if (pending && Date.now() - (this.deferredSince ??= Date.now()) < 200) {
          for (const [k, n] of freed) this.freed.set(k, (this.freed.get(k) ?? 0) + n); // kept for the pass after that result
          return;
        }
        this.deferredSince = undefined;
        resultsChecked = true;
      }
      for (
        let next = this.ready.best(kind, atLimit);
        next !== undefined && room > 0;
        next = this.ready.best(kind, atLimit)
      ) {
        // The fence: a dispatcher whose lease lapsed queues nothing more (the next holder does).
        if (!this.leader) return;
        this.ready.take(next);
        const { jobId, taskId } = next;
        let w: Awaited<ReturnType<typeof updateJob>>;
        try {
          w = await updateJob(this.kv, jobId, (rec) =>
            active(rec) && rec.taskStates[taskId] === "ready" ? ((rec.taskStates[taskId] = "queued"), rec) : null,
          );
        } catch (err) {
          this.ready.add(next); // still ready in the store: offer it again once the bus is back
          throw err;
        }
        if (w === null) continue; // cancelled, or already moved on
        this.wrote(w);
        const task = w.record.tasks.find((t) => t.id === taskId)!;
        const span = dispatchSpan(w.record, task);
        const send = {
          kind,
          data: taskMessages.encode(taskMessage(w.record, taskId, spanCarrier(span))),
          dedupId: dedupId(w.record, taskId),
        };
        try {
          await traced(span, () => this.bus.queues.enqueue(send.kind, send.data, send.dedupId));
          this.log.debug({ taskId, dedupId: send.dedupId }, "task queued");
        } catch (err) {
          this.log.info({ taskId, dedupId: send.dedupId, err: (err as Error).message }, "task send failed");
          this.unsent.push(send); // marked queued: it must reach the queue
          throw err;
        }
        room--;
      }
    }
  }

  /**
   * Cancels a job that has not ended and removes its objects (a cancelled job keeps nothing).
   * Nodes working on it hear it on the job's subject and stop. Returns null if it had ended.
   */
  async cancel(jobId: string): Promise<JobRecord | null> {
    const w = await updateJob(this.kv, jobId, (rec) => (active(rec) ? { ...rec, state: "CANCELLED" } : null));
    if (w === null) return null;
    this.wrote(w);
    await this.store.deletePrefix(jobPrefix(jobId));
    this.publish(w.record);
    return w.record;
  }

  /** Changes an unfinished job's priority; its held tasks move at once. Null if the job has ended. */
  async setPriority(jobId: string, priority: number): Promise<JobRecord | null> {
    checkPriority(priority);
    const w = await updateJob(this.kv, jobId, (rec) => (active(rec) ? { ...rec, priority } : null));
    if (w === null) return null;
    this.wrote(w);
    this.publish(w.record);
    this.requestRelease();
    return w.record;
  }

  /**
   * Runs a FAILED job again from where it stopped: finished tasks and their objects are kept, the
   * rest get a fresh attempt budget. Null if the job is not FAILED.
   */
  async retry(jobId: string): Promise<JobRecord | null> {
    const w = await updateJob(this.kv, jobId, (rec) => {
      if (rec.state !== "FAILED") return null;
      rec.retries = (rec.retries ?? 0) + 1;
      rec.attemptsBeforeRetry ??= {};
      for (const t of rec.tasks) {
        if (rec.taskStates[t.id] === "done") continue;
        rec.taskStates[t.id] = "pending";
        rec.attemptsBeforeRetry[t.id] = rec.attempts[t.id] ?? 0;
        if (rec.inputLosses !== undefined) delete rec.inputLosses[t.id]; // counted in attemptsBeforeRetry now
        if (rec.avoidNodes !== undefined) delete rec.avoidNodes[t.id];
      }
      delete rec.error;
      delete rec.errorStatus;
      rec.state = "RUNNING";
      markReady(rec);
      return rec;
    });
    if (w === null) return null;
    this.wrote(w);
    this.publish(w.record);
    this.requestRelease();
    return w.record;
  }

  /** Records a node's result; returns the stage of the task it reported on. */
  private async onResult(result: TaskResult): Promise<StageKind | undefined> {
    const startTime = Date.now();
    let cancelled = false;
    let doneAlready = false;
    let seen: JobRecord | undefined;
    // A corrupt input to be recomputed goes first: its producer writes only where nothing is.
    if (!result.ok && result.lostInput !== undefined && result.errorStatus === "DATA_LOSS") {
      const cur = await readJob(this.kv, result.jobId);
      if (cur !== null && active(cur.record) && decideLostInput(cur.record, result.lostInput)?.kind === "recompute")
        await this.store.delete(result.lostInput);
    }
    // One revision-checked write records the result and marks what became ready.
    const w = await updateJob(this.kv, result.jobId, (rec) => {
      seen = rec;
      cancelled = rec.state === "CANCELLED";
      doneAlready = rec.taskStates[result.taskId] === "done";
      if (doneAlready || !active(rec)) return null;
      const attempts = (rec.attempts[result.taskId] = (rec.attempts[result.taskId] ?? 0) + 1);
      if (result.startedAt !== undefined && result.finishedAt !== undefined) {
        const readyAt = rec.readyAt?.[result.taskId];
        appendTaskLog(rec, {
          taskId: result.taskId,
          node: result.node,
          ok: result.ok,
          ...(readyAt !== undefined ? { readyAt } : {}),
          startedAt: result.startedAt,
          finishedAt: result.finishedAt,
          modelMs: result.modelMs ?? 0,
          ...(result.phases !== undefined ? { phases: result.phases } : {}),
          ...(result.lostInput !== undefined ? { lostInput: result.lostInput } : {}),
        });
      }
      if (rec.avoidNodes !== undefined) {
        const avoid = rec.avoidNodes[result.taskId] ?? [];
        if (result.ok) delete rec.avoidNodes[result.taskId];
        // An input lost in the store is not the node's fault: another node need not take it.
        else if (!avoid.includes(result.node) && result.lostInput === undefined)
          rec.avoidNodes[result.taskId] = [...avoid, result.node];
      }
      const lost = !result.ok && result.lostInput !== undefined ? decideLostInput(rec, result.lostInput) : null;
      if (lost !== null && lost.kind !== "fail") {
        applyLostInput(rec, result.taskId, lost);
        rec.state = "RUNNING";
      } else if (lost?.kind === "fail") {
        rec.taskStates[result.taskId] = "failed";
        rec.state = "FAILED";
        rec.error = `${result.taskId} on ${result.node}: ${lost.error} (${result.error ?? "lost"})`;
        rec.errorStatus = "DATA_LOSS";
      } else if (result.ok) {
        rec.taskStates[result.taskId] = "done";
        rec.state = Object.values(rec.taskStates).every((s) => s === "done") ? "SUCCEEDED" : "RUNNING";
      } else if (
        attempts - (rec.attemptsBeforeRetry?.[result.taskId] ?? 0) - (rec.inputLosses?.[result.taskId] ?? 0) >=
        this.maxAttempts
      ) {
        rec.taskStates[result.taskId] = "failed";
        rec.state = "FAILED";
        rec.error = `${result.taskId} failed ${attempts} times; last on ${result.node}: ${result.error ?? "unknown error"}`;
        rec.errorStatus = result.errorStatus ?? "INTERNAL";
      } else {
        // Attempts left: back to the held set, to be released again (as a new attempt).
        rec.taskStates[result.taskId] = "ready";
        (rec.readyAt ??= {})[result.taskId] = new Date().toISOString();
        rec.state = "RUNNING";
      }
      if (rec.state === "RUNNING") markReady(rec);
      return rec;
    }).catch((err: unknown) => {
      // A result for a job retention has removed (a node's late report): nothing to record.
      if (err instanceof FarmError && err.status === "NOT_FOUND") return null;
      throw err;
    });
    const span = resultSpan(result, w?.record ?? seen, startTime);
    try {
      if (cancelled) {
        // A task that was running at cancellation may have written outputs after the clean-up.
        await this.store.deletePrefix(jobPrefix(result.jobId));
        return undefined;
      }
      if (w === null) {
        // A second result of one task: a second run of it (or a result handed in twice).
        if (doneAlready)
          this.log.info(
            { taskId: result.taskId, node: result.node, ok: result.ok },
            "result for a task done already: ignored",
          );
        return undefined;
      }
      if (!result.ok) {
        const section = w.record.tasks.find((t) => t.id === result.taskId)?.section;
        this.log.info(
          {
            jobId: result.jobId,
            taskId: result.taskId,
            nodeId: result.node,
            ...(section !== undefined ? { section } : {}),
            error: result.error,
          },
          "task failed on a node",
        );
      }
      span.setAttribute(TRACE_ATTRS.jobState, w.record.state);
      this.wrote(w);
      // A failed job keeps its intermediates: a retry resumes from them.
      if (w.record.state === "SUCCEEDED")
        for (const p of intermediatePrefixes(result.jobId)) await this.store.deletePrefix(p);
      this.publish(w.record, result.taskId);
      return w.record.tasks.find((t) => t.id === result.taskId)?.kind;
    } catch (err) {
      recordFailure(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.tick);
    await this.sweeper?.stop();
    clearInterval(this.strandedCheck);
    clearInterval(this.resync);
    this.unsubscribe?.();
    await this.consumer?.stop();
    await this.releasing;
    // Released last, once nothing more is queued here: a follower takes over at once.
    await this.lease?.stop();
    await this.transition;
  }
}
