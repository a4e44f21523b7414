/**
 * Recomputing a lost object. Every task is deterministic (its inputs, and its generator position,
 * are fixed by the plan), so an object that failed its checksum in storage, or went missing, is
 * made again bit for bit by running the task that wrote it. A task that reports a lost input
 * (TaskResult.lostInput) spends none of its attempts on it: it waits, pending, while that producer
 * runs again, then runs itself. Each producer is recomputed at most MAX_RECOMPUTES times; after
 * that the job fails DATA_LOSS naming the object (storage that corrupts it each time needs a
 * person). A lost input that no task wrote (the job's own images) fails as any error does.
 */
import type { StageTask } from "../../shared/farm/protocol.js";
import type { JobRecord } from "./job-record.js";

export const MAX_RECOMPUTES = 3;

/** The job's task that writes `key`, if any. */
export const producerOf = (r: JobRecord, key: string): StageTask | undefined =>
  r.tasks.find((t) => Object.values(t.outputs).includes(key));

export type LostInputDecision =
  /** The producer is done: run it again (its corrupt object removed first), then the consumer. */
  | { kind: "recompute"; producer: StageTask }
  /** The producer is already running again (another consumer found the loss): the consumer waits. */
  | { kind: "wait"; producer: StageTask }
  /** Recomputed too often: the job fails. */
  | { kind: "fail"; producer: StageTask; error: string }
  /** Nothing to recompute from: an ordinary failure. */
  | null;

/** What to do about the consumer's report that `key`, one of its inputs, is lost. */
export function decideLostInput(r: JobRecord, key: string): LostInputDecision {
  const producer = producerOf(r, key);
  if (producer === undefined) return null;
  if (r.taskStates[producer.id] !== "done") return { kind: "wait", producer };
  const n = r.recomputes?.[producer.id] ?? 0;
  if (n >= MAX_RECOMPUTES)
    return {
      kind: "fail",
      producer,
      error: `object ${key} was lost again after ${n} recomputations of ${producer.id}: check the object store's disks`,
    };
  return { kind: "recompute", producer };
}

/**
 * Applies a recompute or wait inside the job's record update: the consumer goes back to pending
 * without spending an attempt, a done producer goes back to pending too (markReady then readies it),
 * and so do its other dependents not yet sent, which would read the missing object.
 */
export function applyLostInput(
  r: JobRecord,
  consumerId: string,
  d: { kind: "recompute" | "wait"; producer: StageTask },
): void {
  const p = d.producer;
  (r.inputLosses ??= {})[consumerId] = (r.inputLosses[consumerId] ?? 0) + 1;
  r.taskStates[consumerId] = "pending";
  // It may read the object without depending on its producer directly (a later section reads the
  // prompt's embeddings): it waits for the producer all the same.
  (r.waitingFor ??= {})[consumerId] = p.id;
  if (d.kind === "recompute") {
    (r.recomputes ??= {})[p.id] = (r.recomputes[p.id] ?? 0) + 1;
    r.taskStates[p.id] = "pending";
  }
  for (const t of r.tasks)
    if (t.dependsOn.includes(p.id) && r.taskStates[t.id] === "ready") r.taskStates[t.id] = "pending";
}

/** Whether a task that found a lost input still waits for its recomputation (forgotten once done). */
export function waitsForRecompute(r: JobRecord, taskId: string, done: ReadonlySet<string>): boolean {
  const producer = r.waitingFor?.[taskId];
  if (producer === undefined) return false;
  if (!done.has(producer)) return true;
  delete r.waitingFor![taskId];
  return false;
}
