import type { StageKind } from "../../shared/farm/protocol.js";
/**
 * The runnable tasks the dispatcher holds back from the stage queues, and the order they are
 * released in: higher job priority first; among equal priorities, tenants take turns (the tenant
 * served longest ago on that stage goes first, so one tenant's backlog cannot starve another's
 * job); then the older job, then the task's place in its job's plan. Holding them here (instead
 * of queueing everything at once) is what lets a high-priority job submitted later overtake a
 * long backlog: a stage queue only ever holds a task or two.
 */
export interface ReadyTask {
  jobId: string;
  taskId: string;
  kind: StageKind;
  /** Who submitted the job: tenants of equal priority take turns. */
  tenant: string;
  priority: number;
  /** Job creation time, ms since the epoch. */
  createdAt: number;
  /** Index of the task in its job's plan. */
  order: number;
}

/** Negative when a should be released before b, tenants' turns aside (ReadySet.best adds those). */
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
  /** Per stage and tenant, the serial number of the tenant's last task taken there. */
  private readonly lastTaken = new Map<string, number>();
  private taken = 0;

  private turn(t: ReadyTask): number {
    return this.lastTaken.get(`${t.kind}\n${t.tenant}`) ?? -1;
  }

  /** Priority, then the tenant whose turn it is, then compareReady. */
  private compare(a: ReadyTask, b: ReadyTask): number {
    return b.priority - a.priority || this.turn(a) - this.turn(b) || compareReady(a, b);
  }

  add(t: ReadyTask): void {
    let m = this.byKind.get(t.kind);
    if (m === undefined) this.byKind.set(t.kind, (m = new Map()));
    m.set(t.taskId, t);
  }

  delete(kind: StageKind, taskId: string): void {
    this.byKind.get(kind)?.delete(taskId);
  }

  /** Removes a task being released: its tenant's turn on that stage is used up. */
  take(t: ReadyTask): void {
    this.delete(t.kind, t.taskId);
    this.lastTaken.set(`${t.kind}\n${t.tenant}`, ++this.taken);
  }

  /** Forgets every task of the job (cancelled, failed, or about to be re-read). */
  deleteJob(jobId: string): void {
    for (const m of this.byKind.values()) for (const [id, t] of m) if (t.jobId === jobId) m.delete(id);
  }

  setPriority(jobId: string, priority: number): void {
    for (const m of this.byKind.values()) for (const t of m.values()) if (t.jobId === jobId) t.priority = priority;
  }

  /** The next task to release for this stage, or undefined; tasks of `waits`' tenants are passed over. */
  best(kind: StageKind, waits?: (tenant: string) => boolean): ReadyTask | undefined {
    let best: ReadyTask | undefined;
    for (const t of this.byKind.get(kind)?.values() ?? [])
      if ((best === undefined || this.compare(t, best) < 0) && waits?.(t.tenant) !== true) best = t;
    return best;
  }

  /** Tasks held per tenant, every stage. */
  perTenant(): Map<string, number> {
    const out = new Map<string, number>();
    for (const m of this.byKind.values()) for (const t of m.values()) out.set(t.tenant, (out.get(t.tenant) ?? 0) + 1);
    return out;
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
