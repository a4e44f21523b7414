/**
 * Job retention (`--retain-jobs`) on real servers (nats-server, s3rver) with node loops running
 * jobs: a finished job goes after the retention with its objects, idempotency entry, webhook cursor
 * and record (no KV marker left behind); a running or queued job is never swept however old; a
 * sweep killed midway (its job marked expiring, objects partly gone) is finished by the next
 * coordinator; only the lease holder sweeps.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { JobServiceClient, JobState, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { repoRoot } from "../support/paths.js";
import { smallJobRequest, unary } from "../support/grpc.js";
import { until, sleep } from "../support/wait.js";
import { jobPrefix } from "../../shared/farm/keys.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import { readJobIncludingExpiring, type JobRecord } from "../../coordinator/dispatch/job-record.js";
import { WEBHOOK_CURSORS_BUCKET } from "../../coordinator/webhooks/deliverer.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { COORDINATOR_BUCKET, LEADER_KEY, leaseValues } from "../../coordinator/dispatch/leader-lease.js";

const RETAIN_MS = 2000;
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
const records = jsonCodec<JobRecord>();
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
let farm: TestFarm;
let client: JobServiceClient;

before(async () => {
  farm = await startTestFarm({ nodes: true, retention: { retainMs: RETAIN_MS, everyMs: 200 } });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});

after(async () => {
  client.close();
  await farm.stop();
});

const submit = (idempotencyKey = "") =>
  unary<{ job?: Job; deduplicated: boolean }>((cb) => client.submitJob(smallJobRequest(png, { idempotencyKey }), cb));
const getJob = (id: string) => unary<{ job?: Job }>((cb) => client.getJob({ id }, cb));
const listIds = async (): Promise<string[]> =>
  (await unary<{ jobs: Job[] }>((cb) => client.listJobs({ states: [], pageSize: 500, pageToken: "" }, cb))).jobs.map(
    (j) => j.id,
  );
const notFound = async (id: string): Promise<ServiceError | undefined> =>
  getJob(id).then(
    () => undefined,
    (e: ServiceError) => (e.code === status.NOT_FOUND ? e : undefined),
  );

/** The jobs bucket's stream: messages per key subject, and in all (a delete marker would be one). */
async function jobsStream(): Promise<{ subjects: Record<string, number>; messages: number }> {
  const nc = await connect({ servers: farm.natsUrl });
  try {
    const info = await (
      await jetstreamManager(nc)
    ).streams.info(`KV_${JOBS_BUCKET}`, {
      subjects_filter: `$KV.${JOBS_BUCKET}.>`,
    });
    return { subjects: info.state.subjects ?? {}, messages: info.state.messages };
  } finally {
    await nc.close();
  }
}

/** A copy of a real record under a new id, changed by `edit`, written straight to the bucket. */
async function plantRecord(template: JobRecord, edit: (r: JobRecord) => void): Promise<string> {
  const id = randomUUID();
  const r = structuredClone(template);
  r.spec.jobId = id;
  edit(r);
  await farm.jobs.create(id, records.encode(r));
  await farm.store.put(`${jobPrefix(id)}inputs/first-image`, png);
  await farm.store.put(`${jobPrefix(id)}output/video.mp4`, enc("video"));
  return id;
}

let template: JobRecord | undefined;

test("a finished job goes after the retention with everything under its id; running and queued jobs stay", async () => {
  const first = (await submit("retained-1")).job!;
  await until("the job succeeds", async () => (await getJob(first.id)).job!.state === JobState.JOB_STATE_SUCCEEDED);
  const done = (await readJobIncludingExpiring(farm.jobs, first.id))!.record;
  template = structuredClone(done);
  assert.ok((await farm.store.list(jobPrefix(first.id))).includes(`${jobPrefix(first.id)}output/video.mp4`));
  assert.notEqual(done.idempotencyKey, undefined, "the record names its idempotency entry");
  // Unfinished jobs untouched for a day (a long section, a backlog) are never due.
  const dayAgo = new Date(Date.now() - 86_400_000).toISOString();
  const running = await plantRecord(done, (r) => Object.assign(r, { state: "RUNNING", updatedAt: dayAgo }));
  const queued = await plantRecord(done, (r) => Object.assign(r, { state: "QUEUED", updatedAt: dayAgo }));

  const gone = await until("the job expires", () => notFound(first.id), 20_000, 100);
  assert.match(gone.details, new RegExp(`job ${first.id} does not exist \\(finished jobs are removed 2s after`));
  assert.match(gone.details, /--retain-jobs/);
  // Absent to readers from the mark on; the record itself goes last.
  await until("its record goes", async () => (await readJobIncludingExpiring(farm.jobs, first.id)) === null, 10_000);
  assert.deepEqual(await farm.store.list(jobPrefix(first.id)), [], "its objects are gone");
  assert.equal(await farm.idempotency.get(done.idempotencyKey!), null, "its idempotency entry is gone");
  assert.ok(!(await listIds()).includes(first.id), "ListJobs no longer lists it");
  const stream = await jobsStream();
  assert.equal(stream.subjects[`$KV.${JOBS_BUCKET}.${first.id}`], undefined, "no message of it is left");
  assert.equal(stream.messages, Object.keys(stream.subjects).length, "one message per live key: no delete markers");

  // Several passes later the unfinished ones are still there, with their objects.
  await sleep(1000);
  for (const id of [running, queued]) {
    assert.notEqual(await readJobIncludingExpiring(farm.jobs, id), null, `${id} kept`);
    assert.equal((await farm.store.list(jobPrefix(id))).length, 2);
  }
  // The idempotency key is free again: a new job.
  const again = await submit("retained-1");
  assert.equal(again.deduplicated, false);
  assert.notEqual(again.job!.id, first.id);
  for (const id of [running, queued]) {
    await farm.jobs.delete(id);
    await farm.store.deletePrefix(jobPrefix(id));
  }
});

test("a sweep killed midway is finished by the next coordinator", async () => {
  assert.ok(template !== undefined, "the first test keeps a finished record");
  const now = new Date().toISOString();
  const cursors = await farm.bus.kv(WEBHOOK_CURSORS_BUCKET);
  let afterMark = "";
  let afterObjects = "";
  await farm.restartCoordinator(async () => {
    // Killed right after the mark: everything still there (a webhook's cursor too).
    afterMark = await plantRecord(template!, (r) =>
      Object.assign(r, {
        expiring: now,
        updatedAt: now,
        idempotencyKey: "killed-after-mark",
        webhook: { url: "https://hooks.example.com/x", tenant: "default", events: [] },
      }),
    );
    await farm.idempotency.create("killed-after-mark", enc(afterMark));
    await cursors.create(afterMark, enc(JSON.stringify({ done: 0 })));
    // Killed after the objects went, before the idempotency entry and the record.
    afterObjects = await plantRecord(template!, (r) =>
      Object.assign(r, { expiring: now, updatedAt: now, idempotencyKey: "killed-after-objects" }),
    );
    await farm.store.deletePrefix(jobPrefix(afterObjects));
    await farm.idempotency.create("killed-after-objects", enc(afterObjects));
  });
  client.close();
  client = new JobServiceClient(farm.address, credentials.createInsecure());
  // Marked expiring: already absent to every reader, whatever the sweep has done.
  for (const id of [afterMark, afterObjects]) assert.ok(await notFound(id), `${id} reads as absent`);
  for (const id of [afterMark, afterObjects])
    await until(`${id} removed`, async () => (await readJobIncludingExpiring(farm.jobs, id)) === null, 20_000, 100);
  assert.deepEqual(await farm.store.list(jobPrefix(afterMark)), []);
  assert.equal(await farm.idempotency.get("killed-after-mark"), null);
  assert.equal(await farm.idempotency.get("killed-after-objects"), null);
  assert.equal(await cursors.get(afterMark), null);
});

test("only the dispatcher holding the lease sweeps", async () => {
  assert.ok(template !== undefined);
  const lease = await farm.bus.kv(COORDINATOR_BUCKET);
  // The farm's own dispatcher sweeps (it has no lease): while it is down only the follower could.
  await farm.restartCoordinator(async () => {
    // Another coordinator holds the lease (a long TTL: it will not lapse during the test).
    const rev = await lease.create(LEADER_KEY, leaseValues.encode({ holder: "elsewhere", ttlMs: 600_000 }));
    const follower = await Dispatcher.start(farm.bus, farm.store, {
      lease: { holder: "follower", ttlMs: 600_000 },
      retention: { retainMs: 1000, everyMs: 100 },
    });
    try {
      const due = await plantRecord(template!, (r) => Object.assign(r, { updatedAt: new Date(0).toISOString() }));
      await sleep(1000);
      assert.equal(follower.leader, false);
      assert.notEqual(await readJobIncludingExpiring(farm.jobs, due), null, "a follower does not sweep");
      // The holder stops cleanly: the follower takes over at once, and sweeps.
      await lease.update(LEADER_KEY, leaseValues.encode({ holder: "elsewhere", ttlMs: 600_000, released: true }), rev);
      await until("the follower leads", () => follower.leader, 10_000);
      await until("the new leader sweeps", async () => (await readJobIncludingExpiring(farm.jobs, due)) === null);
      assert.deepEqual(await farm.store.list(jobPrefix(due)), []);
    } finally {
      await follower.stop();
      await lease.delete(LEADER_KEY);
    }
  });
  client.close();
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});
