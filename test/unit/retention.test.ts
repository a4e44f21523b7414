/** Retention's pure parts: `--retain-jobs` durations, and the task log kept bounded for long jobs. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatDuration, parseDuration } from "../../shared/duration.js";
import { FarmError } from "../../shared/errors.js";
import { TASK_LOG_KEEP, appendTaskLog, type JobRecord } from "../../coordinator/dispatch/job-record.js";
import { retentionOptions } from "../../coordinator/cli/coordinator.js";

test("durations: a whole number and s, m, h or d; shown back in the largest exact unit", () => {
  assert.equal(parseDuration("--retain-jobs", "7d"), 7 * 86_400_000);
  assert.equal(parseDuration("--retain-jobs", "12h"), 12 * 3_600_000);
  assert.equal(parseDuration("--retain-jobs", " 30m "), 1_800_000);
  assert.equal(parseDuration("--retain-jobs", "90s"), 90_000);
  for (const bad of ["", "7", "0d", "-1h", "1.5h", "7 days", "1w", "10ms"])
    assert.throws(
      () => parseDuration("--retain-jobs", bad),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /--retain-jobs must be/.test(e.message),
      bad,
    );
  assert.equal(formatDuration(7 * 86_400_000), "7d");
  assert.equal(formatDuration(36 * 3_600_000), "36h");
  assert.equal(formatDuration(90_000), "90s");
  assert.equal(formatDuration(1500), "1500ms");
});

test("--retain-jobs wins over FRAMEFARM_RETAIN_JOBS; neither leaves the default", () => {
  const saved = process.env["FRAMEFARM_RETAIN_JOBS"];
  try {
    process.env["FRAMEFARM_RETAIN_JOBS"] = "12h";
    assert.deepEqual(retentionOptions(undefined), { retainJobsMs: 12 * 3_600_000 });
    assert.deepEqual(retentionOptions("30m"), { retainJobsMs: 1_800_000 });
    delete process.env["FRAMEFARM_RETAIN_JOBS"];
    assert.deepEqual(retentionOptions(undefined), {});
  } finally {
    if (saved === undefined) delete process.env["FRAMEFARM_RETAIN_JOBS"];
    else process.env["FRAMEFARM_RETAIN_JOBS"] = saved;
  }
});

test("the task log keeps its latest TASK_LOG_KEEP entries and counts the ones it dropped", () => {
  const rec = { taskLog: [] } as unknown as JobRecord;
  const n = TASK_LOG_KEEP * 3 + 7;
  for (let i = 0; i < n; i++)
    appendTaskLog(rec, { taskId: `t${i}`, node: "a", ok: true, startedAt: "", finishedAt: "", modelMs: 0 });
  assert.equal(rec.taskLog!.length, TASK_LOG_KEEP);
  assert.equal(rec.taskLogDropped, n - TASK_LOG_KEEP);
  assert.equal(rec.taskLog![0]!.taskId, `t${n - TASK_LOG_KEEP}`);
  assert.equal(rec.taskLog!.at(-1)!.taskId, `t${n - 1}`);
});
