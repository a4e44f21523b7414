/**
 * A job's timeline for the dashboard's lane chart: every task attempt from the job's task log (and
 * the attempts in hand or still waiting, while it runs) as a bar on its node's lane, with the wait
 * from ready to start, in milliseconds since the job was created. Attempts that overlap on one
 * node (a node serving several stages runs them at once) get a row each: `node-0`, `node-0 ·2`.
 */
import type { StageKind } from "../../shared/farm/protocol.js";
import type { JobRecord } from "../dispatch/job-record.js";

/** done and failed attempts come from the task log; running ones from nodes' heartbeats; waiting: ready, on no node yet. */
export type AttemptOutcome = "done" | "failed" | "running" | "waiting";

export interface TimelineBar {
  taskId: string;
  stage: StageKind;
  section?: number;
  /** 1 for a task's first attempt, 2 for its retry, ... */
  attempt: number;
  outcome: AttemptOutcome;
  /** The node that ran it; "" while waiting. */
  node: string;
  /** The row it is drawn on. */
  lane: string;
  /** When it became ready (absent in records from before ready times were kept). */
  readyMs?: number;
  /** When it started on its node (absent while waiting). */
  startMs?: number;
  /** When it ended; now for running and waiting attempts. */
  endMs: number;
  /** Time inside onnxruntime, and the task's phases (ms), as the node reported them. */
  modelMs?: number;
  phases?: Record<string, number>;
}

export interface JobTimeline {
  jobId: string;
  state: JobRecord["state"];
  createdAt: string;
  /** Now, in ms since createdAt: where running and waiting bars end. */
  nowMs: number;
  /** Rows top to bottom: nodes in the order they first took a task of the job, then "waiting". */
  lanes: string[];
  bars: TimelineBar[];
}

/** A task a node reports in hand (its heartbeat's current tasks). */
export interface TaskInHand {
  taskId: string;
  node: string;
  startedAtMs: number;
}

export const WAITING_LANE = "waiting";

/** Row names of a node's rows: the node itself, then `node ·2`, `node ·3`, ... */
const rowName = (base: string, row: number): string => (row === 0 ? base : `${base} ·${row + 1}`);

/** Puts each bar on the first row of its group where it overlaps nothing; returns the rows in order. */
function packRows(bars: TimelineBar[], group: string, from: (b: TimelineBar) => number): string[] {
  const ends: number[] = [];
  for (const b of [...bars].sort((x, y) => from(x) - from(y))) {
    let row = ends.findIndex((end) => end <= from(b));
    if (row < 0) row = ends.push(b.endMs) - 1;
    else ends[row] = b.endMs;
    b.lane = rowName(group, row);
  }
  return ends.map((_, i) => rowName(group, i));
}

export function jobTimeline(r: JobRecord, inHand: readonly TaskInHand[], nowMs: number): JobTimeline {
  const created = Date.parse(r.createdAt);
  const at = (iso: string | undefined): number | undefined =>
    iso === undefined ? undefined : Date.parse(iso) - created;
  const tasks = new Map(r.tasks.map((t) => [t.id, t]));
  const attempts = new Map<string, number>();
  const bars: TimelineBar[] = [];
  const bar = (taskId: string, b: Omit<TimelineBar, "taskId" | "stage" | "section" | "attempt" | "lane">): void => {
    const task = tasks.get(taskId);
    if (task === undefined) return;
    const attempt = (attempts.get(taskId) ?? 0) + 1;
    attempts.set(taskId, attempt);
    bars.push({
      taskId,
      stage: task.kind,
      ...(task.section !== undefined ? { section: task.section } : {}),
      attempt,
      lane: "",
      ...b,
    });
  };
  for (const e of r.taskLog ?? []) {
    const readyMs = at(e.readyAt);
    bar(e.taskId, {
      outcome: e.ok ? "done" : "failed",
      node: e.node,
      ...(readyMs !== undefined ? { readyMs } : {}),
      startMs: at(e.startedAt)!,
      endMs: at(e.finishedAt)!,
      modelMs: e.modelMs,
      ...(e.phases !== undefined ? { phases: e.phases } : {}),
    });
  }
  // While the job runs: what nodes hold, and what waits for a node.
  const now = nowMs - created;
  if (r.state === "QUEUED" || r.state === "RUNNING") {
    const held = new Map(inHand.filter((t) => r.taskStates[t.taskId] === "queued").map((t) => [t.taskId, t]));
    for (const t of r.tasks) {
      const state = r.taskStates[t.id];
      const readyMs = at(r.readyAt?.[t.id]);
      const ready = readyMs !== undefined ? { readyMs } : {};
      const h = held.get(t.id);
      if (h !== undefined)
        bar(t.id, { outcome: "running", node: h.node, ...ready, startMs: h.startedAtMs - created, endMs: now });
      else if (state === "ready" || state === "queued")
        bar(t.id, { outcome: "waiting", node: "", ...ready, endMs: now });
    }
  }
  // Lanes: each node's rows in the order the node first started a task of the job; waits last.
  const byNode = new Map<string, TimelineBar[]>();
  const started = bars.filter((b) => b.startMs !== undefined).sort((a, b) => a.startMs! - b.startMs!);
  for (const b of started) byNode.set(b.node, [...(byNode.get(b.node) ?? []), b]);
  const lanes = [...byNode].flatMap(([node, list]) => packRows(list, node, (b) => b.startMs!));
  const waiting = bars.filter((b) => b.outcome === "waiting");
  lanes.push(...packRows(waiting, WAITING_LANE, (b) => b.readyMs ?? b.endMs));
  return { jobId: r.spec.jobId, state: r.state, createdAt: r.createdAt, nowMs: now, lanes, bars };
}
