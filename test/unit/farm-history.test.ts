/**
 * The dashboard's hour of history: the fixed-size rings and keyed series it is made of (bounded
 * however long it runs and however many nodes come and go), and the farm's samples: sections per
 * minute over the trailing minute, waiting tasks by stage, node GPUs only where nodes report them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Ring, SeriesSet } from "../../coordinator/dashboard/time-series.js";
import { FarmHistory, historySampleMs } from "../../coordinator/dashboard/farm-history.js";
import type { FarmSnapshot, GpuView, NodeView } from "../../coordinator/dashboard/farm-view.js";
import { STAGE_KINDS, type StageKind } from "../../shared/farm/protocol.js";

test("a ring keeps the newest `capacity` samples, oldest first", () => {
  const r = new Ring<number>(3);
  assert.deepEqual(r.toArray(), []);
  assert.equal(r.last(), undefined);
  for (let i = 1; i <= 5; i++) r.push(i * 10, i);
  assert.equal(r.size, 3);
  assert.deepEqual(
    r.toArray().map((s) => s.v),
    [3, 4, 5],
  );
  assert.deepEqual(r.last(), { t: 50, v: 5 });
  assert.deepEqual(
    r.toArray(40).map((s) => s.t),
    [40, 50],
  );
  assert.throws(() => new Ring(0), RangeError);
});

test("series of nodes gone past the window are forgotten; at most maxSeries are kept", () => {
  const set = new SeriesSet<number>(10, 1000, 3);
  set.push("a", 0, 1);
  set.push("b", 500, 2);
  set.push("b", 1400, 3);
  // a's last sample (t=0) left the window ending at 1400.
  assert.deepEqual(set.entries(1400), [
    [
      "b",
      [
        { t: 500, v: 2 },
        { t: 1400, v: 3 },
      ],
    ],
  ]);
  assert.equal(set.size, 1);
  set.push("c", 1500, 1);
  set.push("d", 1600, 1);
  set.push("e", 1700, 1); // a fourth live series: b, sampled longest ago, makes room
  assert.deepEqual(
    set.entries(1700).map(([k]) => k),
    ["c", "d", "e"],
  );
  // Many nodes over a long time: never more than maxSeries, each ring at most its capacity.
  const many = new SeriesSet<number>(5, 100, 4);
  for (let t = 0; t < 10_000; t++) many.push(`node-${t % 50}`, t, t);
  assert.ok(many.size <= 4);
  for (const [, samples] of many.entries(9_999)) assert.ok(samples.length <= 5);
});

const waiting = (w: Partial<Record<StageKind, number>>): Record<StageKind, number> =>
  Object.fromEntries(STAGE_KINDS.map((k) => [k, w[k] ?? 0])) as Record<StageKind, number>;
const gpu = (util: number | undefined, used: number): GpuView => ({
  index: 0,
  name: "NVIDIA H200",
  ...(util !== undefined ? { utilizationPercent: util } : {}),
  memoryUsedMib: used,
  memoryTotalMib: 143771,
  sampledAt: new Date(0).toISOString(),
});
const node = (id: string, gpus: GpuView[], status: NodeView["status"] = "active"): NodeView =>
  ({ id, status, gpus }) as unknown as NodeView;
const snapshot = (nodes: NodeView[], w: Partial<Record<StageKind, number>> = {}): FarmSnapshot =>
  ({ nodes, waitingTasks: waiting(w) }) as unknown as FarmSnapshot;

test("throughput is the sections finished in the trailing minute; waiting tasks by stage", () => {
  const h = new FarmHistory({ intervalMs: 10_000 });
  const t0 = 1_000_000;
  h.sample(snapshot([], { denoise: 2, decode: 1 }), t0);
  for (const dt of [-70_000, -30_000, -20_000, -1]) h.section(t0 + 10_000 + dt);
  h.sample(snapshot([], { denoise: 1 }), t0 + 10_000);
  h.section(t0 + 15_000);
  h.sample(snapshot([]), t0 + 20_000);
  const v = h.view(t0 + 20_000);
  assert.deepEqual(v.farm.t, [t0, t0 + 10_000, t0 + 20_000]);
  // At t0+10s: three within the minute (the one 70 s before is out); at t0+20s: the same three and one more.
  assert.deepEqual(v.farm.sectionsPerMinute, [0, 3, 4]);
  assert.deepEqual(v.farm.waitingTasks.denoise, [2, 1, 0]);
  assert.deepEqual(v.farm.waitingTasks.decode, [1, 0, 0]);
  assert.deepEqual(v.farm.waitingTasks.mux, [0, 0, 0]);
  assert.deepEqual(v.gpus, []);
  assert.equal(v.windowMs, 3_600_000);
});

test("an hour at the sampling interval, no more: older samples are dropped", () => {
  const h = new FarmHistory({ intervalMs: 10_000 });
  for (let i = 0; i < 2000; i++) h.sample(snapshot([]), i * 10_000);
  const v = h.view(1999 * 10_000);
  assert.equal(v.farm.t.length, 361);
  assert.equal(v.farm.t[0], (1999 - 360) * 10_000);
});

test("GPU series only for nodes that report a GPU; a MIG GPU's missing utilisation stays missing", () => {
  const h = new FarmHistory({ intervalMs: 1000 });
  h.sample(
    snapshot([node("cpu-0", []), node("gpu-0", [gpu(80, 70_000)]), node("mig-0", [gpu(undefined, 10_240)])]),
    1000,
  );
  h.sample(
    snapshot([node("cpu-0", []), node("gpu-0", [gpu(95, 90_000)]), node("mig-0", [gpu(undefined, 10_240)])]),
    2000,
  );
  // A stopped node's last record is not a sample.
  h.sample(snapshot([node("gpu-0", [gpu(99, 1)], "stopped")]), 3000);
  const v = h.view(3000);
  assert.deepEqual(
    v.gpus.map((g) => [g.node, g.index, g.name, g.t, g.utilizationPercent, g.memoryUsedMib, g.memoryTotalMib]),
    [
      ["gpu-0", 0, "NVIDIA H200", [1000, 2000], [80, 95], [70_000, 90_000], [143771, 143771]],
      ["mig-0", 0, "NVIDIA H200", [1000, 2000], [null, null], [10_240, 10_240], [143771, 143771]],
    ],
  );
  // An hour later they are gone.
  assert.deepEqual(h.view(2000 + 3_600_001).gpus, []);
});

test("FRAMEFARM_HISTORY_SAMPLE_MS: 10 s unless set; nonsense is INVALID_ARGUMENT", () => {
  assert.equal(historySampleMs({}), 10_000);
  assert.equal(historySampleMs({ FRAMEFARM_HISTORY_SAMPLE_MS: "1000" }), 1000);
  for (const bad of ["0", "10.5", "fast", "100", "9999999"])
    assert.throws(
      () => historySampleMs({ FRAMEFARM_HISTORY_SAMPLE_MS: bad }),
      (e: Error & { status?: string }) => e.status === "INVALID_ARGUMENT",
    );
});
