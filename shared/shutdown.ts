/**
 * Bounded shutdown. A farm process stops in steps (stop serving, finish or hand back the task in
 * hand, close the bus and the store); any peer may already be gone (NATS, the object store, the
 * process that started it), and a step that waits on a dead peer must not hang the exit. Each
 * step gets what is left of one grace period; a step that fails or overruns is logged and the next
 * one runs. Error messages are never empty.
 */

/** How long a process may take to stop after SIGTERM/SIGINT (FRAMEFARM_STOP_GRACE_MS). */
export const DEFAULT_STOP_GRACE_MS = 10_000;

export function stopGraceMs(env: NodeJS.ProcessEnv = process.env): number {
  const text = env["FRAMEFARM_STOP_GRACE_MS"];
  if (text === undefined || text === "") return DEFAULT_STOP_GRACE_MS;
  const n = Number(text);
  return Number.isInteger(n) && n >= 100 ? n : DEFAULT_STOP_GRACE_MS;
}

/** A message for any thrown value, never empty: an Error without one is named by its type, code or cause. */
export function errorMessage(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0 && err.message === "")
    return err.errors.map(errorMessage).join("; ");
  if (err instanceof Error) {
    if (err.message.trim() !== "") return err.message;
    const code = (err as { code?: unknown }).code;
    const cause = err.cause === undefined ? "" : `: ${errorMessage(err.cause)}`;
    return `${err.name || "Error"}${typeof code === "string" || typeof code === "number" ? ` ${code}` : ""} (no message)${cause}`;
  }
  if (typeof err === "string" && err.trim() !== "") return err;
  if (err !== null && typeof err === "object") {
    const m = (err as { message?: unknown }).message;
    if (typeof m === "string" && m.trim() !== "") return m;
    try {
      const json = JSON.stringify(err);
      if (json !== undefined && json !== "{}") return json;
    } catch {
      // fall through
    }
  }
  return `${err === undefined ? "undefined" : err === null ? "null" : typeof err} thrown without a message`;
}

/** Resolves with the work's value, or with `timedOut` once ms have passed; the work's failure is rethrown. */
export async function within<T>(
  ms: number,
  work: Promise<T>,
): Promise<{ value: T; timedOut: false } | { timedOut: true }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<{ timedOut: true }>((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), Math.max(0, ms));
  });
  try {
    return await Promise.race([work.then((value) => ({ value, timedOut: false as const })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface StopStep {
  name: string;
  run: () => Promise<unknown>;
}

export interface StopProblem {
  step: string;
  problem: string;
}

/**
 * Runs the steps in order within graceMs in all; a step overrunning what is left or failing is
 * reported and skipped. Returns the problems (empty: a clean stop).
 */
export async function stopInOrder(
  steps: readonly StopStep[],
  graceMs: number,
  report?: (p: StopProblem) => void,
): Promise<StopProblem[]> {
  const deadline = Date.now() + graceMs;
  const problems: StopProblem[] = [];
  for (const step of steps) {
    const left = deadline - Date.now();
    let problem: string | null = null;
    try {
      // A step gets at least a moment, so a late one can still close what is quick to close.
      const r = await within(Math.max(left, 200), step.run());
      if (r.timedOut) problem = `did not finish within ${Math.max(left, 200)} ms`;
    } catch (err) {
      problem = errorMessage(err);
    }
    if (problem !== null) {
      const p = { step: step.name, problem };
      problems.push(p);
      report?.(p);
    }
  }
  return problems;
}
