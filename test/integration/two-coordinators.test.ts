/**
 * Two coordinator processes on one farm (real nats-server, s3rver and nodes): one holds the leader
 * lease and dispatches, the other serves the API. Jobs submitted to the follower complete; with the
 * leader SIGKILLed mid-job the follower takes over within seconds and the jobs complete with the
 * embedded render's frames, every task queued once. The killed one, started again, follows and
 * takes submissions too. A leader stalled past its lease (SIGSTOP) is replaced, and on waking
 * (SIGCONT) finds its lease lapsed and queues nothing more.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { JobState, jobStateToJSON, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import { JOBS_BUCKET, isStepEvent, jobEventSubject, jobEvents } from "../../shared/farm/protocol.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import { loadReferenceCase, submitRequestFor } from "../../coordinator/cli/parity/reference-case.js";
import { pixelsFor, readImageFile } from "../../coordinator/cli/embedded/inputs.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { openNodeModels } from "../../gpu-node/main.js";
import { FarmProcesses } from "../support/farm-processes.js";
import { storedVideoFrames } from "../support/video.js";
import { casesDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";

const LEASE_TTL_MS = 2000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let farm: FarmProcesses | undefined;
let dir: string | undefined;
let expected: Buffer;
let request: Awaited<ReturnType<typeof submitRequestFor>>;

before(async () => {
  // A reference case with more steps, so the leader can be killed while a section denoises.
  const refCase = await loadReferenceCase(path.join(casesDir(), "inverted_3sec.json"));
  refCase.params = { ...refCase.params, steps: 12 };
  request = await submitRequestFor(refCase);
  const embedded = await openNodeModels(tinyBundleDir(), "cpu");
  try {
    const m = embedded.runtime.bundle.manifest;
    const params = validateRenderParams(
      { ...refCase.params, lossless: true },
      { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
    );
    const size = "height" in params.size ? params.size : { height: 0, width: 0 };
    const first = await pixelsFor(await readImageFile(refCase.firstImage!, "image"), size);
    expected = Buffer.from((await renderJob(embedded, { params, firstPixels: first, lastPixels: null })).data);
  } finally {
    await embedded.close();
  }
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-two-coordinators-"));
  farm = await FarmProcesses.start(
    dir,
    { ackWaitMs: 2000, s3RetryMs: 10_000, coordinators: 2, leaseTtlMs: LEASE_TTL_MS },
    { general: "text,image,vae", "denoise-0": "denoise" },
  );
});

after(async () => {
  await farm?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

function atStep(f: FarmProcesses, jobId: string, section: number, step: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`no step ${section}/${step} of ${jobId}`))), 60_000);
    const off = f.bus.events.subscribe(jobEventSubject(jobId), (_s, data) => {
      const e = jobEvents.decode(data);
      if (isStepEvent(e) && e.section >= section && e.step >= step) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

async function finished(f: FarmProcesses, id: string): Promise<Job> {
  const end = Date.now() + 120_000;
  for (;;) {
    const job = await f.get(id);
    if (job.state === JobState.JOB_STATE_SUCCEEDED || job.state === JobState.JOB_STATE_FAILED || Date.now() > end)
      return job;
    await sleep(100);
  }
}

async function assertEmbeddedFrames(f: FarmProcesses, id: string): Promise<void> {
  const job = await finished(f, id);
  assert.equal(job.state, JobState.JOB_STATE_SUCCEEDED, `${id}: ${jobStateToJSON(job.state)} ${job.error}`);
  const frames = await storedVideoFrames(f.store, job.videoKey, job.width, job.height);
  assert.ok(Buffer.from(frames.data).equals(expected), `${id}: frames differ from embedded mode`);
}

const leaderGauge = async (f: FarmProcesses, i: number): Promise<string | undefined> =>
  /^framefarm_coordinator_leader (\d)$/m.exec(await f.coordinatorMetrics(i))?.[1];

async function taskCount(f: FarmProcesses, ids: string[]): Promise<number> {
  const kv = await f.bus.kv(JOBS_BUCKET);
  let n = 0;
  for (const id of ids) n += (await readJob(kv, id))!.record.tasks.length;
  return n;
}

test("jobs submitted to the follower complete; the leader SIGKILLed mid-job, the follower takes over", async (t) => {
  const f = farm!;
  assert.equal(await f.leaderIndex(), 0, "the first coordinator started leads");
  assert.deepEqual([await leaderGauge(f, 0), await leaderGauge(f, 1)], ["1", "0"]);
  f.useCoordinator(1);
  const storedBefore = await f.storedTaskMessages();
  const a = await f.submit(request);
  const b = await f.submit(request);
  await atStep(f, a.id, 1, 3);
  await f.killCoordinator(0);
  const killedAt = Date.now();
  while ((await f.leaderIndex()) !== 1 && Date.now() - killedAt < 4 * LEASE_TTL_MS) await sleep(50);
  const takeoverMs = Date.now() - killedAt;
  assert.equal(await f.leaderIndex(), 1, `the follower holds the lease ${takeoverMs} ms after the kill`);
  // Within the TTL and a few polls (the follower watches every 400 ms at this TTL).
  assert.ok(takeoverMs < LEASE_TTL_MS + 1500, `took over after ${takeoverMs} ms`);
  t.diagnostic(`the follower took over ${takeoverMs} ms after the leader was killed`);
  assert.equal(await leaderGauge(f, 1), "1");
  for (const id of [a.id, b.id]) await assertEmbeddedFrames(f, id);
  // Two leaders queueing one attempt would store it twice (the dedup window drops a repeat send).
  assert.equal((await f.storedTaskMessages()) - storedBefore, await taskCount(f, [a.id, b.id]));

  // The killed coordinator comes back as the follower; its API takes jobs, the leader runs them.
  await f.startCoordinator(0);
  await sleep(500);
  assert.equal(await f.leaderIndex(), 1, "the new leader keeps the lease");
  assert.equal(await leaderGauge(f, 0), "0");
  f.useCoordinator(0);
  const c = await f.submit(request);
  await assertEmbeddedFrames(f, c.id);
});

test("a leader stalled past its lease is replaced; woken, it steps down and queues nothing", async (t) => {
  const f = farm!;
  const leader = (await f.leaderIndex())!;
  const other = 1 - leader;
  f.useCoordinator(other);
  const storedBefore = await f.storedTaskMessages();
  const a = await f.submit(request);
  await atStep(f, a.id, 1, 3);
  f.pauseCoordinator(leader, true);
  const pausedAt = Date.now();
  try {
    while ((await f.leaderIndex()) !== other && Date.now() - pausedAt < 4 * LEASE_TTL_MS) await sleep(50);
    assert.equal(await f.leaderIndex(), other, "the other coordinator took over");
    t.diagnostic(`took over ${Date.now() - pausedAt} ms after the leader stalled`);
    // Stalled a while longer, with the new leader dispatching, before it wakes.
    await sleep(1000);
  } finally {
    f.pauseCoordinator(leader, false);
  }
  const b = await f.submit(request);
  await sleep(500);
  assert.equal(await leaderGauge(f, leader), "0", "the woken coordinator knows it no longer leads");
  assert.equal(await f.leaderIndex(), other);
  for (const id of [a.id, b.id]) await assertEmbeddedFrames(f, id);
  assert.equal((await f.storedTaskMessages()) - storedBefore, await taskCount(f, [a.id, b.id]));
});
