/**
 * The farm as an operator sees it, rebuilt from the bus about once a second and at once (coalesced)
 * when a job or node event arrives: nodes from the registry, queue depths, jobs from their records
 * with live denoise steps. The dashboard streams these snapshots and /metrics reads the latest.
 * It also notices each finished task attempt once (for stage-duration metrics and log lines).
 */
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { Logger } from "../../shared/log/logger.js";
import { readJob, type JobRecord } from "../dispatch/job-record.js";
import { latestPreview, progressOf } from "../dispatch/job-views.js";
import {
  FORGET_NODES_AFTER_MS,
  NODES_BUCKET,
  NodeState,
  decodeNode,
  isGone,
  msOf,
  readNodes,
  type NodeRecord,
} from "../../shared/nodes/node-registry.js";
import {
  ALL_JOB_EVENTS,
  ALL_NODE_EVENTS,
  JOBS_BUCKET,
  STAGE_KINDS,
  isStepEvent,
  decodeJobEvent,
  stageFromPb,
  type StepEvent,
  type StageKind,
} from "../../shared/farm/protocol.js";
import { jobOutputKeys, videoFileName } from "../planner/job-outputs.js";

export type NodeStatus = "active" | "draining" | "drained" | "quarantined" | "stopped" | "gone";

export interface NodeView {
  id: string;
  status: NodeStatus;
  /** Why, where the status needs it (quarantine). */
  statusReason: string;
  stages: StageKind[];
  bundle: string;
  executionProvider: string;
  device: string;
  version: string;
  hostname: string;
  startedAt: string;
  heartbeatAgeMs: number;
  currentTasks: { jobId: string; taskId: string; stage: StageKind | null; section?: number; runningMs: number }[];
  tasksDone: number;
  tasksFailed: number;
  sectionsDone: number;
  sectionsPerHour: number;
  bytesRead: number;
  bytesWritten: number;
  /** The node's GPUs as its last heartbeat reported them (CUDA nodes with nvidia-smi; else none). */
  gpus: GpuView[];
}

export interface GpuView {
  index: number;
  name: string;
  /** Absent where the GPU does not report it (MIG). */
  utilizationPercent?: number;
  memoryUsedMib: number;
  memoryTotalMib: number;
  sampledAt: string;
}

export interface QueueView {
  stage: StageKind;
  waiting: number;
  inFlight: number;
  redelivered: number;
  /** Nodes asking this queue for a task right now. */
  idleWorkers: number;
}

/** A task's state as shown: the record's, or "running" while a node reports it in hand. */
export type TaskView = JobRecord["taskStates"][string] | "running";

export interface SectionView {
  index: number;
  denoise: TaskView;
  decode: TaskView;
  /** The live denoise step, while running. */
  step?: number;
}

export interface JobView {
  id: string;
  state: JobRecord["state"];
  priority: number;
  /** Operator retries so far. */
  retries: number;
  prompt: string;
  width: number;
  height: number;
  numFrames: number;
  /** Frames of the video the job extends (--video); absent for a start image. */
  inputVideoFrames?: number;
  steps: number;
  createdAt: string;
  updatedAt: string;
  tasksDone: number;
  tasksTotal: number;
  sectionsDone: number;
  sectionsTotal: number;
  etaSeconds: number;
  sections: SectionView[];
  error?: string;
  errorStatus?: string;
  /** The latest decoded section's preview, when there is one. */
  preview?: { section: number; key: string; url: string };
  /** The finished MP4. */
  video?: { key: string; url: string };
}

export interface FarmSnapshot {
  at: string;
  nodes: NodeView[];
  queues: QueueView[];
  jobs: JobView[];
  /** Jobs per state, over every job in the bucket (jobs lists the newest only). */
  jobStates: Record<JobRecord["state"], number>;
  /**
   * Tasks of unfinished jobs that are ready and on no node yet, by stage: held by the dispatcher
   * until a node of the stage asks, or on the stage's queue. The farm's real queue depth (the
   * queues themselves hold only what idle nodes asked for).
   */
  waitingTasks: Record<StageKind, number>;
}

/** A finished task attempt, noticed once. */
export interface TaskAttempt {
  jobId: string;
  taskId: string;
  stage: StageKind;
  section?: number;
  node: string;
  ok: boolean;
  seconds: number;
  /** Unix ms. */
  finishedMs: number;
}

export interface FarmViewOptions {
  /** Jobs listed in a snapshot, newest first. */
  maxJobs?: number;
  refreshMs?: number;
  log: Logger;
}

const URL_EXPIRY_S = 3600;
const num = (b: bigint): number => Number(b);

function decodeNodeSafely(data: Uint8Array): NodeRecord | null {
  try {
    return data.length === 0 ? null : decodeNode(data);
  } catch {
    return null; // not a node record: ignore it
  }
}

const NODE_STATUS: Record<number, NodeStatus> = {
  [NodeState.NODE_STATE_ACTIVE]: "active",
  [NodeState.NODE_STATE_DRAINING]: "draining",
  [NodeState.NODE_STATE_DRAINED]: "drained",
  [NodeState.NODE_STATE_STOPPED]: "stopped",
  [NodeState.NODE_STATE_QUARANTINED]: "quarantined",
};

export function nodeView(r: NodeRecord, now: number): NodeView {
  const started = msOf(r.startedAt);
  const hours = Math.max(1e-9, (now - started) / 3_600_000);
  return {
    id: r.nodeId,
    status: r.state !== NodeState.NODE_STATE_STOPPED && isGone(r, now) ? "gone" : (NODE_STATUS[r.state] ?? "active"),
    statusReason: r.stateReason,
    stages: (r.capabilities?.stages ?? []).map(stageFromPb).filter((s): s is StageKind => s !== null),
    bundle: r.capabilities?.bundle ?? "",
    executionProvider: r.capabilities?.executionProvider ?? "",
    device: r.capabilities?.device ?? "",
    version: r.version,
    hostname: r.hostname,
    startedAt: new Date(started).toISOString(),
    heartbeatAgeMs: Math.max(0, now - msOf(r.heartbeatAt)),
    currentTasks: r.currentTasks.map((t) => ({
      jobId: t.jobId,
      taskId: t.taskId,
      stage: stageFromPb(t.stage),
      ...(t.section !== undefined ? { section: t.section } : {}),
      runningMs: Math.max(0, now - msOf(t.startedAt)),
    })),
    tasksDone: num(r.tasksDone),
    tasksFailed: num(r.tasksFailed),
    sectionsDone: num(r.sectionsDone),
    sectionsPerHour: num(r.sectionsDone) / hours,
    bytesRead: num(r.bytesRead),
    bytesWritten: num(r.bytesWritten),
    gpus: r.gpus.map((g) => ({
      index: g.index,
      name: g.name,
      ...(g.utilizationPercent !== undefined ? { utilizationPercent: g.utilizationPercent } : {}),
      memoryUsedMib: g.memoryUsedMib,
      memoryTotalMib: g.memoryTotalMib,
      sampledAt: new Date(msOf(g.sampledAt)).toISOString(),
    })),
  };
}

export class FarmView {
  private latest: FarmSnapshot | undefined;
  private readonly listeners = new Set<(s: FarmSnapshot) => void>();
  private readonly attemptListeners = new Set<(a: TaskAttempt) => void>();
  private readonly liveSteps = new Map<string, StepEvent>();
  /** Node records announced on events, fresher than the bucket between heartbeats. */
  private readonly announced = new Map<string, NodeRecord>();
  /** Task attempts already noticed, per job (counted from the job's first, dropped log entries included). */
  private readonly seenAttempts = new Map<string, number>();
  private readonly lastState = new Map<string, JobRecord["state"]>();
  private readonly urls = new Map<string, { url: string; until: number }>();
  private readonly final = new Map<string, JobRecord>();
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private running: Promise<FarmSnapshot> | undefined;
  private offs: (() => void)[] = [];

  private constructor(
    private readonly bus: Bus,
    private readonly store: ObjectStore,
    private readonly jobs: KeyValue,
    private readonly nodes: KeyValue,
    private readonly options: FarmViewOptions,
  ) {}

  static async start(bus: Bus, store: ObjectStore, options: FarmViewOptions): Promise<FarmView> {
    const v = new FarmView(bus, store, await bus.kv(JOBS_BUCKET), await bus.kv(NODES_BUCKET), options);
    v.offs.push(
      bus.events.subscribe(ALL_JOB_EVENTS, (subject, data) => {
        const e = decodeJobEvent(subject, data);
        if (e === null) return;
        if (isStepEvent(e)) v.liveSteps.set(e.jobId, e);
        v.refreshSoon();
      }),
      bus.events.subscribe(ALL_NODE_EVENTS, (_s, data) => {
        const r = decodeNodeSafely(data);
        if (r !== null) v.announced.set(r.nodeId, r);
        v.refreshSoon();
      }),
    );
    await v.refresh();
    v.timer = setInterval(
      () => void v.refresh().catch((err: unknown) => options.log.warn({ err }, "farm view refresh failed")),
      options.refreshMs ?? 1000,
    );
    return v;
  }

  /** The last snapshot (refreshed about every second). */
  snapshot(): FarmSnapshot {
    return this.latest!;
  }

  onSnapshot(listener: (s: FarmSnapshot) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onAttempt(listener: (a: TaskAttempt) => void): () => void {
    this.attemptListeners.add(listener);
    return () => this.attemptListeners.delete(listener);
  }

  /** Events come in bursts (a step event per denoise step): one refresh per burst. */
  private refreshSoon(): void {
    this.soon ??= setTimeout(() => {
      this.soon = undefined;
      void this.refresh().catch((err: unknown) => this.options.log.warn({ err }, "farm view refresh failed"));
    }, 150);
  }

  /** Rebuilds the snapshot now (one rebuild at a time; callers during one share it). */
  refresh(): Promise<FarmSnapshot> {
    this.running ??= this.build().finally(() => (this.running = undefined));
    return this.running;
  }

  private async url(key: string, downloadAs?: string): Promise<string> {
    // One URL per key for half its life, so a page's <video> does not reload at every update.
    const hit = this.urls.get(key);
    if (hit !== undefined && hit.until > Date.now()) return hit.url;
    const url = await this.store.presignedGetUrl(key, URL_EXPIRY_S, downloadAs);
    this.urls.set(key, { url, until: Date.now() + (URL_EXPIRY_S * 1000) / 2 });
    return url;
  }

  private async build(): Promise<FarmSnapshot> {
    const now = Date.now();
    const nodes = (await readNodes(this.nodes))
      .map((stored) => {
        const a = this.announced.get(stored.nodeId);
        return nodeView(a !== undefined && msOf(a.heartbeatAt) > msOf(stored.heartbeatAt) ? a : stored, now);
      })
      // A node stopped or gone for long is history: its record stays in the bucket, off the page.
      .filter((n) => n.heartbeatAgeMs < FORGET_NODES_AFTER_MS || (n.status !== "gone" && n.status !== "stopped"))
      .sort((a, b) => a.id.localeCompare(b.id));
    const queues: QueueView[] = [];
    for (const stage of STAGE_KINDS) {
      try {
        queues.push({ stage, ...(await this.bus.queues.stats(stage)) });
      } catch {
        queues.push({ stage, waiting: 0, inFlight: 0, redelivered: 0, idleWorkers: 0 }); // not declared yet
      }
    }
    const running = new Map<string, string>();
    for (const n of nodes) if (n.status !== "gone") for (const t of n.currentTasks) running.set(t.taskId, n.id);

    const records: JobRecord[] = [];
    const ids = await this.jobs.keys();
    for (const id of ids) {
      // A succeeded or cancelled job never changes again: read it once.
      const cached = this.final.get(id);
      const r = cached ?? (await readJob(this.jobs, id))?.record;
      if (r === undefined) continue;
      if (r.state === "SUCCEEDED" || r.state === "CANCELLED") this.final.set(id, r);
      records.push(r);
    }
    // Forget what is kept per job once the job is gone (retention removed it), and stale URLs.
    const live = new Set(ids);
    for (const m of [this.final, this.seenAttempts, this.lastState, this.liveSteps])
      for (const id of m.keys()) if (!live.has(id)) m.delete(id);
    for (const [key, u] of this.urls) if (u.until <= now) this.urls.delete(key);
    const registered = new Set(nodes.map((n) => n.id));
    for (const id of this.announced.keys()) if (!registered.has(id)) this.announced.delete(id);
    const jobStates: FarmSnapshot["jobStates"] = { QUEUED: 0, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0 };
    const waitingTasks = Object.fromEntries(STAGE_KINDS.map((k) => [k, 0])) as Record<StageKind, number>;
    for (const r of records) {
      jobStates[r.state]++;
      this.notice(r);
      if (r.state !== "QUEUED" && r.state !== "RUNNING") continue;
      for (const t of r.tasks) {
        const s = r.taskStates[t.id];
        if (s === "ready" || (s === "queued" && !running.has(t.id))) waitingTasks[t.kind]++;
      }
    }
    records.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    const jobs: JobView[] = [];
    for (const r of records.slice(0, this.options.maxJobs ?? 100)) jobs.push(await this.jobView(r, running));
    const snap: FarmSnapshot = { at: new Date(now).toISOString(), nodes, queues, jobs, jobStates, waitingTasks };
    this.latest = snap;
    for (const l of this.listeners) l(snap);
    return snap;
  }

  private async jobView(r: JobRecord, running: Map<string, string>): Promise<JobView> {
    const id = r.spec.jobId;
    const live = r.state === "RUNNING" ? this.liveSteps.get(id) : undefined;
    if (r.state !== "RUNNING") this.liveSteps.delete(id);
    const p = progressOf(r, live);
    // A node may still hold a task of a job that just ended (it notices within its lease): the
    // job's own state wins then.
    const open = r.state === "QUEUED" || r.state === "RUNNING";
    const state = (taskId: string): TaskView => {
      const s = r.taskStates[taskId];
      return open && s === "queued" && running.has(taskId) ? "running" : (s ?? "pending");
    };
    const sections: SectionView[] = r.tasks
      .filter((t) => t.kind === "denoise")
      .map((t) => {
        const k = t.section!;
        // A step event says a section runs before the node's next heartbeat does.
        const denoise = state(t.id) === "queued" && live?.section === k ? "running" : state(t.id);
        // The last section generated is decoded by the mux (job-plan.ts), the others by their own task.
        const decoder = r.tasks.find(
          (d) =>
            (d.kind === "decode" && d.section === k) || (d.kind === "mux" && d.inputs[`latents${k}`] !== undefined),
        );
        return {
          index: k,
          denoise,
          decode: decoder === undefined ? "pending" : state(decoder.id),
          ...(live !== undefined && live.section === k && denoise !== "done" ? { step: live.step } : {}),
        };
      });
    const view: JobView = {
      id,
      state: r.state,
      priority: r.priority ?? 0,
      retries: r.retries ?? 0,
      prompt: r.spec.params.prompt,
      width: r.spec.width,
      height: r.spec.height,
      numFrames: r.spec.params.numFrames,
      ...((r.spec.params.video ?? null) !== null ? { inputVideoFrames: r.spec.params.video!.frames } : {}),
      steps: r.spec.params.steps,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
      tasksDone: Object.values(r.taskStates).filter((s) => s === "done").length,
      tasksTotal: r.tasks.length,
      sectionsDone: p.sectionsDone,
      sectionsTotal: p.sectionsTotal,
      etaSeconds: r.state === "RUNNING" || r.state === "QUEUED" ? p.etaSeconds : 0,
      sections,
      ...(r.error !== undefined ? { error: r.error } : {}),
      ...(r.errorStatus !== undefined && r.state === "FAILED" ? { errorStatus: r.errorStatus } : {}),
    };
    // A cancelled job's objects are gone; a failed one keeps what it made.
    if (r.state !== "CANCELLED") {
      const key = latestPreview(r);
      const section = r.tasks.find((t) => t.kind === "decode" && t.outputs["preview"] === key)?.section;
      if (key !== undefined && section !== undefined) view.preview = { section, key, url: await this.url(key) };
      const video = jobOutputKeys(id, r.tasks).video;
      // The page's download link saves it; its <video> plays it all the same.
      if (r.state === "SUCCEEDED") view.video = { key: video, url: await this.url(video, videoFileName(r)) };
    }
    return view;
  }

  /** Logs state changes and hands each new task attempt to the attempt listeners, once. */
  private notice(r: JobRecord): void {
    const id = r.spec.jobId;
    const log = this.options.log.child({ jobId: id });
    const before = this.lastState.get(id);
    if (before !== r.state) {
      if (before !== undefined || Date.parse(r.updatedAt) >= this.startedAt)
        log.info({ state: r.state, ...(r.error !== undefined ? { error: r.error } : {}) }, "job state");
      this.lastState.set(id, r.state);
    }
    const entries = r.taskLog ?? [];
    // entries[i] is the job's attempt dropped + i: the log keeps only the latest.
    const dropped = r.taskLogDropped ?? 0;
    // Attempts that finished before this coordinator started were counted by its predecessor.
    let seen = Math.max(
      dropped,
      this.seenAttempts.get(id) ?? dropped + entries.filter((e) => Date.parse(e.finishedAt) < this.startedAt).length,
    );
    for (; seen < dropped + entries.length; seen++) {
      const e = entries[seen - dropped]!;
      const task = r.tasks.find((t) => t.id === e.taskId);
      if (task === undefined) continue;
      const a: TaskAttempt = {
        jobId: id,
        taskId: e.taskId,
        stage: task.kind,
        ...(task.section !== undefined ? { section: task.section } : {}),
        node: e.node,
        ok: e.ok,
        seconds: (Date.parse(e.finishedAt) - Date.parse(e.startedAt)) / 1000,
        finishedMs: Date.parse(e.finishedAt),
      };
      log.info(
        {
          taskId: a.taskId,
          stage: a.stage,
          ...(a.section !== undefined ? { section: a.section } : {}),
          nodeId: a.node,
          ok: a.ok,
          seconds: a.seconds,
        },
        a.ok ? "task done" : "task failed",
      );
      for (const l of this.attemptListeners) l(a);
    }
    this.seenAttempts.set(id, seen);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    clearTimeout(this.soon);
    for (const off of this.offs) off();
    await this.running?.catch(() => undefined);
  }
}
