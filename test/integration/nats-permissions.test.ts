/**
 * Least privilege on a real nats-server run with the farm's authorization block
 * (shared/farm/nats-permissions.ts): a denoise node's user pulls its queue, reports results, reads
 * job state, heartbeats and publishes steps; it cannot change a job (jobs bucket writes, a job's
 * state subject), pull another stage's queue, queue tasks, read other clients' replies or touch
 * streams. Each refusal reaches the caller as PERMISSION_DENIED naming the subject and the user.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { connect } from "@nats-io/transport-node";
import { PermissionViolationError } from "@nats-io/nats-core";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { NatsBus, inboxPrefixFor, streamOf, type NatsCredentials } from "../../shared/bus/nats-bus.js";
import type { Delivery } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import { natsAuthorizationConfig, type NatsUser } from "../../shared/farm/nats-permissions.js";
import {
  JOBS_BUCKET,
  RESULTS_QUEUE,
  STAGE_KINDS,
  jobStateSubject,
  jobStepSubject,
  jobEvents,
  readJobState,
  stageConsumerName,
  taskResults,
} from "../../shared/farm/protocol.js";
import { DRAIN_BUCKET, NODES_BUCKET, putLatest } from "../../shared/nodes/node-registry.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import { sleep, until } from "../support/wait.js";

const users: NatsUser[] = [
  { user: "coordinator", password: "coordinator-secret-0123456789", role: { kind: "coordinator" } },
  { user: "node-denoise", password: "denoise-secret-0123456789", role: { kind: "node", stages: ["denoise"] } },
  {
    user: "node-encode",
    password: "encode-secret-0123456789",
    role: { kind: "node", stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"] },
  },
];
const creds = (user: string): NatsCredentials => {
  const u = users.find((x) => x.user === user)!;
  return { user: u.user, password: u.password as string };
};
const JOB = "job-0001";
const record = jsonCodec<{ state: string; spec: { jobId: string } }>();

let dir: string;
let server: LocalServer;
let url: string;
let coordinator: NatsBus;
let node: NatsBus;
const refusals: FarmError[] = [];

/** A raw client's refusal: the server's violation, itself or as a request error's cause. */
const violated = (e: unknown): boolean =>
  e instanceof PermissionViolationError || (e instanceof Error && e.cause instanceof PermissionViolationError);

const denied = (pattern: RegExp) => (e: unknown) => {
  assert.ok(e instanceof FarmError, `a FarmError, got ${String(e)}`);
  assert.equal(e.status, "PERMISSION_DENIED", e.message);
  assert.equal(e.code, 7, "gRPC PERMISSION_DENIED");
  assert.match(e.message, pattern);
  assert.match(e.message, /for user node-denoise/);
  return true;
};

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-nats-perm-"));
  server = await startNatsServer(path.join(dir, "js"), undefined, { authorization: natsAuthorizationConfig(users) });
  url = `nats://${server.host}:${server.port}`;
  // The coordinator creates every stream and bucket, as Dispatcher.start and the dashboard do.
  coordinator = await NatsBus.connect(url, "coordinator", 1, { credentials: creds("coordinator") });
  for (const q of [...STAGE_KINDS, RESULTS_QUEUE]) await coordinator.queues.ensure(q);
  for (const b of [JOBS_BUCKET, NODES_BUCKET, DRAIN_BUCKET]) await coordinator.kv(b);
  await (await coordinator.kv(JOBS_BUCKET)).create(JOB, record.encode({ state: "RUNNING", spec: { jobId: JOB } }));
  node = await NatsBus.connect(url, "node d0", 1, {
    credentials: creds("node-denoise"),
    onRefused: (e) => refusals.push(e),
  });
});

after(async () => {
  await node?.close();
  await coordinator?.close();
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

test("without the right password, or without any, NATS turns the connection away: UNAUTHENTICATED naming the user", async () => {
  await assert.rejects(
    NatsBus.connect(url, "intruder", 1, { credentials: { user: "node-denoise", password: "wrong-password-0000" } }),
    (e: unknown) => e instanceof FarmError && e.status === "UNAUTHENTICATED" && /user node-denoise/.test(e.message),
  );
  await assert.rejects(
    NatsBus.connect(url, "anonymous"),
    (e: unknown) => e instanceof FarmError && e.status === "UNAUTHENTICATED",
  );
});

test("a denoise node pulls its stage's queue, reports a result, reads job state, heartbeats and publishes steps", async () => {
  await node.queues.ensure("denoise"); // the node loop's start: allowed to look, not to create
  const got: Delivery[] = [];
  const consumer = await node.queues.consume(
    "denoise",
    { name: stageConsumerName("denoise"), ackWaitMs: 5000, maxDeliver: 3 },
    async (d) => void got.push(d),
  );
  await coordinator.queues.enqueue("denoise", new TextEncoder().encode("task"), "task#0.0");
  await until("the task reached the node", () => got.length === 1, 10_000);
  got[0]!.working();
  // The node's ack is a request, confirmed by the server (NodeLoop.settle): on $JS.ACK, the reply on its inbox.
  await got[0]!.confirmAck(2000);
  await consumer.stop();
  // A result goes out under one dedup id, sent again until it lands (NodeLoop.report).
  const result = taskResults.encode({ jobId: JOB, taskId: "t", ok: true, node: "d0" });
  await node.queues.enqueue(RESULTS_QUEUE, result, "result-1");
  await node.queues.enqueue(RESULTS_QUEUE, result, "result-1");
  assert.equal(await coordinator.queues.depth(RESULTS_QUEUE), 1, "the result is on the results queue, once");

  // Read from the bucket's leader (allow_direct off): the stream's message get, not a direct get.
  assert.deepEqual(await readJobState(await node.kv(JOBS_BUCKET), JOB, "t"), { state: "RUNNING", taskDone: false });
  const nodes = await node.kv(NODES_BUCKET);
  await putLatest(nodes, "d0", new TextEncoder().encode("record"));
  await putLatest(nodes, "d0", new TextEncoder().encode("record 2"));
  // Its drain request cleared (a purge of the key's subject), as a node does at start.
  const drains = await node.kv(DRAIN_BUCKET);
  await (await coordinator.kv(DRAIN_BUCKET)).create("d0", new TextEncoder().encode("drain"));
  await drains.delete("d0");
  assert.equal(await drains.get("d0"), null, "the drain request is gone");
  assert.equal(new TextDecoder().decode((await (await coordinator.kv(NODES_BUCKET)).get("d0"))!.value), "record 2");

  const heard: string[] = [];
  const off = coordinator.events.subscribe(`ff.events.>`, (s) => heard.push(s));
  const cancels: string[] = [];
  const offNode = node.events.subscribe(jobStateSubject(JOB), (s) => cancels.push(s));
  await sleep(100); // subscriptions registered with the server
  node.events.publish(
    jobStepSubject(JOB),
    jobEvents.encode({ jobId: JOB, taskId: "t", section: 0, step: 1, steps: 2 }),
  );
  coordinator.events.publish(
    jobStateSubject(JOB),
    jobEvents.encode({ jobId: JOB, state: "CANCELLED", done: 0, total: 1 }),
  );
  await until("step and cancel heard", () => heard.includes(jobStepSubject(JOB)) && cancels.length === 1, 5000);
  off();
  offNode();
  assert.deepEqual(refusals, [], "nothing the node did above was refused");
});

test("a node's credentials cannot change a job: jobs bucket writes are PERMISSION_DENIED and the record stays", async () => {
  const jobs = await node.kv(JOBS_BUCKET);
  const cur = (await jobs.get(JOB))!;
  const forged = record.encode({ state: "SUCCEEDED", spec: { jobId: JOB } });
  await assert.rejects(jobs.update(JOB, forged, cur.revision), denied(/"\$KV\.jobs\.job-0001"/));
  await assert.rejects(jobs.create("job-0002", forged), denied(/"\$KV\.jobs\.job-0002"/));
  // A delete purges the key's subject through the stream API: the jobs bucket's is refused.
  await assert.rejects(jobs.delete(JOB), denied(/"\$JS\.API\.STREAM\.PURGE\.KV_jobs"/));
  const after = (await (await coordinator.kv(JOBS_BUCKET)).get(JOB))!;
  assert.equal(after.revision, cur.revision, "the record was not written");
  assert.equal(record.decode(after.value).state, "RUNNING");
  assert.deepEqual(await (await coordinator.kv(JOBS_BUCKET)).keys(), [JOB]);
});

test("a denoise node cannot pull another stage's queue, nor queue tasks", async () => {
  await coordinator.queues.enqueue("encode_text", new TextEncoder().encode("not yours"), "text#0.0");
  await assert.rejects(
    node.queues.consume("encode_text", { name: stageConsumerName("encode_text"), ackWaitMs: 5000, maxDeliver: 3 }, () =>
      Promise.resolve(),
    ),
    denied(/CONSUMER\.(CREATE|DURABLE\.CREATE)\.FF_Q_encode_text/),
  );
  // Even once the stage's own nodes made the durable, a fetch from it is refused.
  const encoder = await NatsBus.connect(url, "node e0", 1, { credentials: creds("node-encode") });
  const c = await encoder.queues.consume(
    "encode_text",
    { name: stageConsumerName("encode_text"), ackWaitMs: 5000, maxDeliver: 3 },
    () => new Promise(() => undefined), // holds the task: it stays in flight
  );
  const nc = await connect({
    servers: url,
    user: "node-denoise",
    pass: creds("node-denoise").password,
    inboxPrefix: inboxPrefixFor("node-denoise"),
  });
  try {
    await assert.rejects(
      nc.request(`$JS.API.CONSUMER.MSG.NEXT.${streamOf("encode_text")}.${stageConsumerName("encode_text")}`, "1", {
        timeout: 3000,
      }),
      violated,
    );
    // Another client's replies (the coordinator's job records among them) are out of its sight.
    const sub = nc.subscribe("_INBOX.>");
    const closed = (async () => {
      try {
        for await (const _m of sub) return "message";
      } catch (e) {
        return violated(e) ? "refused" : String(e);
      }
      return "closed";
    })();
    assert.equal(await closed, "refused");
  } finally {
    await nc.close();
  }
  await assert.rejects(
    node.queues.enqueue("denoise", new TextEncoder().encode("forged task")),
    denied(/"ff\.q\.denoise"/),
  );
  await assert.rejects(node.queues.stats("denoise"), denied(/CONSUMER\.LIST|STREAM/));
  void c.stop();
  await encoder.close();
});

test("a node's publish on a job's state subject (a forged cancel) never arrives, and the node reports the refusal", async () => {
  const heard: string[] = [];
  const off = coordinator.events.subscribe(jobStateSubject(JOB), (s) => heard.push(s));
  await sleep(100);
  refusals.length = 0;
  node.events.publish(jobStateSubject(JOB), jobEvents.encode({ jobId: JOB, state: "CANCELLED", done: 0, total: 1 }));
  await until("the node heard the refusal", () => refusals.length > 0, 5000);
  await sleep(300);
  off();
  assert.deepEqual(heard, [], "nobody received the forged cancel");
  assert.equal(refusals[0]!.status, "PERMISSION_DENIED");
  assert.match(refusals[0]!.message, /publish to "ff\.events\.job\.job-0001\.state" for user node-denoise/);
});

test("a node never creates or deletes streams: started before the coordinator it waits for them, then runs", async () => {
  const lone = await startNatsServer(path.join(dir, "js-2"), undefined, {
    authorization: natsAuthorizationConfig(users),
  });
  const loneUrl = `nats://${lone.host}:${lone.port}`;
  const waiting: FarmError[] = [];
  const early = await NatsBus.connect(loneUrl, "early node", 1, {
    credentials: creds("node-denoise"),
    onRefused: (e) => waiting.push(e),
    awaitStreamsMs: 20_000,
  });
  try {
    const opened = early.kv(JOBS_BUCKET);
    const said = await until(
      "the node said it waits",
      () => waiting.find((e) => /waiting up to/.test(e.message)),
      5000,
    );
    assert.match(said.message, /STREAM\.CREATE\.KV_jobs.*stream KV_jobs\); waiting up to 20 s for a coordinator/);
    const coord = await NatsBus.connect(loneUrl, "late coordinator", 1, { credentials: creds("coordinator") });
    await coord.kv(JOBS_BUCKET);
    await (await opened).keys();
    await coord.close();
    // Deleting a stream is refused outright.
    const nc = await connect({
      servers: loneUrl,
      user: "node-denoise",
      pass: creds("node-denoise").password,
      inboxPrefix: inboxPrefixFor("node-denoise"),
    });
    await assert.rejects(nc.request("$JS.API.STREAM.DELETE.KV_jobs", "", { timeout: 3000 }), violated);
    await nc.close();
  } finally {
    await early.close();
    await lone.stop();
  }
});
