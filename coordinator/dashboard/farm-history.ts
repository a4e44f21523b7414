/**
 * The farm's last hour for the dashboard's charts, kept in the coordinator: every intervalMs it
 * samples the farm view's latest snapshot into fixed-size rings (time-series.ts): throughput as
 * sections finished in the trailing minute, the tasks waiting for a node by stage, and each node
 * GPU's utilisation and memory as its heartbeat reported them. Nothing is stored: a restarted
 * coordinator starts a new hour.
 */
import { FarmError } from "../../shared/errors.js";
import { STAGE_KINDS, type StageKind } from "../../shared/farm/protocol.js";
import type { FarmSnapshot, FarmView } from "./farm-view.js";
import { Ring, SeriesSet } from "./time-series.js";

export const DEFAULT_SAMPLE_MS = 10_000;
export const HISTORY_WINDOW_MS = 3_600_000;
/** Node GPUs followed at once; past it the one silent longest is dropped. */
const MAX_GPU_SERIES = 256;
const MINUTE_MS = 60_000;

export interface FarmHistoryOptions {
  intervalMs: number;
  windowMs?: number;
  maxGpuSeries?: number;
}

interface FarmPoint {
  sectionsPerMinute: number;
  waitingTasks: Record<StageKind, number>;
}

interface GpuPoint {
  node: string;
  index: number;
  name: string;
  utilizationPercent: number | null;
  memoryUsedMib: number;
  memoryTotalMib: number;
}

/** What /api/history answers: columns of samples (t in Unix ms), oldest first. */
export interface FarmHistoryView {
  at: string;
  intervalMs: number;
  windowMs: number;
  farm: { t: number[]; sectionsPerMinute: number[]; waitingTasks: Record<StageKind, number[]> };
  /** One per node GPU that reported inside the window; none on a farm of CPU nodes. */
  gpus: {
    node: string;
    index: number;
    name: string;
    t: number[];
    /** null where the GPU reports no utilisation (MIG). */
    utilizationPercent: (number | null)[];
    memoryUsedMib: number[];
    memoryTotalMib: number[];
  }[];
}

/** FRAMEFARM_HISTORY_SAMPLE_MS: how often the charts' history is sampled (default 10 s). */
export function historySampleMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env["FRAMEFARM_HISTORY_SAMPLE_MS"];
  if (v === undefined || v === "") return DEFAULT_SAMPLE_MS;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 250 || n > 600_000)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `FRAMEFARM_HISTORY_SAMPLE_MS must be a whole number of ms from 250 to 600000, got ${JSON.stringify(v)}`,
    );
  return n;
}

export class FarmHistory {
  readonly intervalMs: number;
  readonly windowMs: number;
  private readonly farm: Ring<FarmPoint>;
  private readonly gpus: SeriesSet<GpuPoint>;
  /** Finish times of the sections of the trailing minute (and of one sample interval before it). */
  private sections: number[] = [];

  constructor(o: FarmHistoryOptions) {
    this.intervalMs = o.intervalMs;
    this.windowMs = o.windowMs ?? HISTORY_WINDOW_MS;
    const capacity = Math.ceil(this.windowMs / this.intervalMs) + 1;
    this.farm = new Ring(capacity);
    this.gpus = new SeriesSet(capacity, this.windowMs, o.maxGpuSeries ?? MAX_GPU_SERIES);
  }

  /** A section (denoise task) finished at finishedMs. */
  section(finishedMs: number): void {
    this.sections.push(finishedMs);
  }

  sample(s: FarmSnapshot, now: number): void {
    // A result is noticed up to a refresh after it finished: keep a little past the minute.
    this.sections = this.sections.filter((t) => t > now - MINUTE_MS - this.intervalMs);
    this.farm.push(now, {
      sectionsPerMinute: this.sections.filter((t) => t > now - MINUTE_MS && t <= now).length,
      waitingTasks: { ...s.waitingTasks },
    });
    for (const n of s.nodes) {
      if (n.status === "gone" || n.status === "stopped") continue;
      for (const g of n.gpus)
        this.gpus.push(`${n.id}\u0000${String(g.index).padStart(4, "0")}`, now, {
          node: n.id,
          index: g.index,
          name: g.name,
          utilizationPercent: g.utilizationPercent ?? null,
          memoryUsedMib: g.memoryUsedMib,
          memoryTotalMib: g.memoryTotalMib,
        });
    }
  }

  view(now: number): FarmHistoryView {
    const farm = this.farm.toArray(now - this.windowMs);
    return {
      at: new Date(now).toISOString(),
      intervalMs: this.intervalMs,
      windowMs: this.windowMs,
      farm: {
        t: farm.map((p) => p.t),
        sectionsPerMinute: farm.map((p) => p.v.sectionsPerMinute),
        waitingTasks: Object.fromEntries(
          STAGE_KINDS.map((k) => [k, farm.map((p) => p.v.waitingTasks[k] ?? 0)]),
        ) as Record<StageKind, number[]>,
      },
      gpus: this.gpus.entries(now).map(([, samples]) => {
        const last = samples.at(-1)!.v;
        return {
          node: last.node,
          index: last.index,
          name: last.name,
          t: samples.map((p) => p.t),
          utilizationPercent: samples.map((p) => p.v.utilizationPercent),
          memoryUsedMib: samples.map((p) => p.v.memoryUsedMib),
          memoryTotalMib: samples.map((p) => p.v.memoryTotalMib),
        };
      }),
    };
  }
}

/** Samples the view's snapshots into a history every intervalMs, and counts its finished sections. */
export function startFarmHistory(view: FarmView, o: FarmHistoryOptions): { history: FarmHistory; stop(): void } {
  const history = new FarmHistory(o);
  const off = view.onAttempt((a) => {
    if (a.ok && a.stage === "denoise") history.section(a.finishedMs);
  });
  history.sample(view.snapshot(), Date.now());
  const timer = setInterval(() => history.sample(view.snapshot(), Date.now()), history.intervalMs);
  timer.unref();
  return {
    history,
    stop: () => {
      clearInterval(timer);
      off();
    },
  };
}
