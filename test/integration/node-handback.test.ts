/**
 * A node told to stop (SIGTERM) mid-task finishes it if it can within its grace period, else
 * hands it back: the task goes to another node at once (not after the queue's ack wait) and the
 * job completes. The node exits within its grace period.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { JobState } from "../../proto/gen/framefarm/v1/jobs.js";
import { JOBS_BUCKET, isStepEvent, jobEventSubject, jobEvents } from "../../shared/farm/protocol.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import { FarmProcesses } from "../support/farm-processes.js";
import { repoRoot } from "../support/paths.js";

const GRACE_MS = 1_000;
const ACK_WAIT_MS = 120_000;
let farm: FarmProcesses | undefined;
let dir: string | undefined;

after(async () => {
  await farm?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

test("a stopping node hands its task back and the job completes on another node", async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-handback-"));
  farm = await FarmProcesses.start(dir, { ackWaitMs: ACK_WAIT_MS, s3RetryMs: 5_000 }, { general: "text,image,vae" });
  await farm.startNode("d1", "denoise", { env: { FRAMEFARM_STOP_GRACE_MS: String(GRACE_MS) } });
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  // One section of 200 steps: far longer than the node's grace.
  const job = await farm.submit({
    image: { source: { $case: "data", value: image } },
    settings: {
      prompt: "hand back",
      length: { $case: "numFrames", value: 30 },
      mode: 0,
      steps: 200,
      resolution: 128,
      seed: 1n,
      lossless: true,
    },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
    keyframes: [],
    loras: [],
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the denoise never started")), 60_000);
    const off = farm!.bus.events.subscribe(jobEventSubject(job.id), (_s, data) => {
      const e = jobEvents.decode(data);
      if (isStepEvent(e) && e.step >= 2) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
  const stopped = await farm.stopNode("d1");
  assert.equal(stopped.code, 0, `node exit: ${JSON.stringify(stopped)}`);
  assert.ok(stopped.ms <= GRACE_MS + 2_000, `the node took ${stopped.ms} ms to stop`);
  const handedBackAt = Date.now();
  await farm.startNode("d2", "denoise");
  for (;;) {
    const j = await farm.get(job.id);
    if (j.state === JobState.JOB_STATE_SUCCEEDED) break;
    assert.notEqual(j.state, JobState.JOB_STATE_FAILED, `job failed: ${j.error}`);
    // Redelivery after the ack wait would take ACK_WAIT_MS: a handed-back task starts at once.
    assert.ok(Date.now() - handedBackAt < ACK_WAIT_MS / 2, "the task was not handed back");
    await new Promise((r) => setTimeout(r, 250));
  }
  // d1 handed the denoise back without a result (neither done nor failed there); d2 did it.
  const record = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record;
  const denoise = (record.taskLog ?? []).filter((e) => e.taskId.includes("denoise"));
  assert.deepEqual(
    denoise.map((e) => [e.node, e.ok]),
    [["d2", true]],
    JSON.stringify(record.taskLog),
  );
});
