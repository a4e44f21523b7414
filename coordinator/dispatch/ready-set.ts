import type { StageKind } from "../../shared/farm/protocol.js";
/**
 * The runnable tasks the dispatcher holds back from the stage queues, and the order they are
 * released in: higher job priority first, then the older job, then the task's place in its job's
 * plan. Holding them here (instead of queueing everything at once) is what lets a high-priority
 * job submitted later overtake a long backlog: a stage queue only ever holds a task or two.
 */

export interface ReadyTask {
  jobId: string;
  taskId: string;
  kind: StageKind;
  priority: number;
  /** Job creation time, ms since the epoch. */
  createdAt: number;
  /** Index of the task in its job's plan. */
  order: number;
}

/** Negative when a should be released before b. */
export function compareReady(a: ReadyTask, b: ReadyTask): number {
  return (
    b.priority - a.priority ||
    a.createdAt - b.createdAt ||
    (a.jobId < b.jobId ? -1 : a.jobId > b.jobId ? 1 : 0) ||
    a.order - b.order
  );
}

export class ReadySet {
  private readonly byKind = new Map<StageKind, Map<string, ReadyTask>>();

  add(t: ReadyTask): void {
    let m = this.byKind.get(t.kind);
    if (m === undefined) this.byKind.set(t.kind, (m = new Map()));
    m.set(t.taskId, t);
  }

  delete(kind: StageKind, taskId: string): void {
    this.byKind.get(kind)?.delete(taskId);
  }

  /** Forgets every task of the job (cancelled, failed, or about to be re-read). */
  deleteJob(jobId: string): void {
    for (const m of this.byKind.values()) for (const [id, t] of m) if (t.jobId === jobId) m.delete(id);
  }

  setPriority(jobId: string, priority: number): void {
    for (const m of this.byKind.values()) for (const t of m.values()) if (t.jobId === jobId) t.priority = priority;
  }

  /** The next task to release for this stage, or undefined. */
  best(kind: StageKind): ReadyTask | undefined {
    let best: ReadyTask | undefined;
    for (const t of this.byKind.get(kind)?.values() ?? [])
      if (best === undefined || compareReady(t, best) < 0) best = t;
    return best;
  }

  size(kind?: StageKind): number {
    if (kind !== undefined) return this.byKind.get(kind)?.size ?? 0;
    let n = 0;
    for (const m of this.byKind.values()) n += m.size;
    return n;
  }

  kinds(): StageKind[] {
    return [...this.byKind].filter(([, m]) => m.size > 0).map(([k]) => k);
  }
}
