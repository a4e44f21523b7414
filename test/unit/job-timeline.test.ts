/**
 * A job's timeline for the dashboard's lane chart, from its record: each attempt on its node's lane
 * with its wait from ready to start, a failed attempt and its retry on another node, overlapping
 * attempts of one node on rows of their own, and while the job runs what nodes hold and what waits.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { jobTimeline, type TimelineBar } from "../../coordinator/dashboard/job-timeline.js";
import type { JobRecord } from "../../coordinator/dispatch/job-record.js";
import type { StageKind, StageTask } from "../../shared/farm/protocol.js";

const T0 = Date.parse("2026-03-01T12:00:00.000Z");
const iso = (ms: number): string => new Date(T0 + ms).toISOString();
const task = (kind: StageKind, section?: number): StageTask => ({
  id: `job1.${kind}${section !== undefined ? `.${section}` : ""}`,
  jobId: "job1",
  kind,
  ...(section !== undefined ? { section } : {}),
  dependsOn: [],
  inputs: {},
  outputs: {},
});
const TASKS = [
  task("encode_text"),
  task("encode_image"),
  task("vae_encode"),
  task("denoise", 0),
  task("denoise", 1),
  task("decode", 0),
  task("decode", 1),
  task("mux"),
];
const entry = (taskId: string, node: string, ok: boolean, ready: number, start: number, end: number) => ({
  taskId: `job1.${taskId}`,
  node,
  ok,
  readyAt: iso(ready),
  startedAt: iso(start),
  finishedAt: iso(end),
  modelMs: end - start - 1,
});

function record(
  state: JobRecord["state"],
  log: NonNullable<JobRecord["taskLog"]>,
  states: Record<string, string>,
): JobRecord {
  return {
    spec: { jobId: "job1" },
    state,
    tasks: TASKS,
    taskStates: Object.fromEntries(TASKS.map((t) => [t.id, states[t.id.slice(5)] ?? "pending"])),
    attempts: {},
    readyAt: { "job1.denoise.1": iso(900), "job1.decode.0": iso(900) },
    taskLog: log,
    createdAt: iso(0),
    updatedAt: iso(1000),
  } as unknown as JobRecord;
}

const pick = (b: TimelineBar) => [b.taskId.slice(5), b.attempt, b.outcome, b.lane, b.readyMs, b.startMs, b.endMs];

test("a finished job: attempts on their nodes' lanes, waits, a failed attempt and its retry elsewhere", () => {
  const log = [
    entry("encode_text", "node-0", true, 0, 10, 100),
    // node-0 runs the image encode beside the text encode: a second row.
    entry("encode_image", "node-0", true, 0, 20, 80),
    entry("vae_encode", "node-0", true, 0, 100, 150),
    entry("denoise.0", "denoise-0", true, 150, 160, 400),
    entry("decode.0", "denoise-0", false, 400, 410, 450),
    entry("denoise.1", "denoise-0", true, 400, 450, 700),
    entry("decode.0", "node-0", true, 450, 460, 520),
    entry("decode.1", "node-0", true, 700, 705, 760),
    entry("mux", "node-0", true, 760, 770, 800),
  ];
  const t = jobTimeline(record("SUCCEEDED", log, {}), [], T0 + 5000);
  assert.equal(t.jobId, "job1");
  assert.equal(t.nowMs, 5000);
  assert.deepEqual(t.lanes, ["node-0", "node-0 ·2", "denoise-0"]);
  assert.deepEqual(t.bars.map(pick), [
    ["encode_text", 1, "done", "node-0", 0, 10, 100],
    ["encode_image", 1, "done", "node-0 ·2", 0, 20, 80],
    ["vae_encode", 1, "done", "node-0", 0, 100, 150],
    ["denoise.0", 1, "done", "denoise-0", 150, 160, 400],
    ["decode.0", 1, "failed", "denoise-0", 400, 410, 450],
    ["denoise.1", 1, "done", "denoise-0", 400, 450, 700],
    ["decode.0", 2, "done", "node-0", 450, 460, 520],
    ["decode.1", 1, "done", "node-0", 700, 705, 760],
    ["mux", 1, "done", "node-0", 760, 770, 800],
  ]);
  assert.equal(t.bars.find((b) => b.taskId === "job1.denoise.1")!.section, 1);
  assert.equal(t.bars.find((b) => b.taskId === "job1.mux")!.stage, "mux");
});

test("a running job: tasks in hand run until now, ready ones wait on the waiting lane", () => {
  const log = [
    entry("encode_text", "node-0", true, 0, 10, 100),
    entry("encode_image", "node-0", true, 0, 100, 200),
    entry("vae_encode", "node-0", true, 0, 200, 300),
    entry("denoise.0", "denoise-0", true, 300, 310, 900),
  ];
  const r = record("RUNNING", log, {
    encode_text: "done",
    encode_image: "done",
    vae_encode: "done",
    "denoise.0": "done",
    "denoise.1": "queued",
    "decode.0": "ready",
  });
  const t = jobTimeline(r, [{ taskId: "job1.denoise.1", node: "denoise-0", startedAtMs: T0 + 950 }], T0 + 1200);
  assert.deepEqual(t.bars.slice(4).map(pick), [
    ["denoise.1", 1, "running", "denoise-0", 900, 950, 1200],
    ["decode.0", 1, "waiting", "waiting", 900, undefined, 1200],
  ]);
  assert.deepEqual(t.lanes, ["node-0", "denoise-0", "waiting"]);
  // Once the job has ended nothing is in hand or waiting, whatever a late heartbeat says.
  const ended = jobTimeline(
    { ...r, state: "CANCELLED" },
    [{ taskId: "job1.denoise.1", node: "denoise-0", startedAtMs: T0 + 950 }],
    T0 + 1200,
  );
  assert.equal(ended.bars.length, 4);
  assert.deepEqual(ended.lanes, ["node-0", "denoise-0"]);
});

test("records from before ready times were kept: bars without a wait", () => {
  const old = entry("encode_text", "node-0", true, 0, 10, 100) as Record<string, unknown>;
  delete old["readyAt"];
  const r = record("SUCCEEDED", [old as never], {});
  delete r.readyAt;
  const [bar] = jobTimeline(r, [], T0).bars;
  assert.equal(bar!.readyMs, undefined);
  assert.equal("readyMs" in bar!, false);
});
