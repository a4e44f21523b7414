/**
 * Webhooks on a farm of real servers (nats-server, s3rver, the coordinator's API and nodes) and a
 * receiver on 127.0.0.1 that fails, delays and accepts as each test says: every event of a job
 * arrives signed, in order, once; failures and timeouts are retried with backoff; a restarted
 * coordinator resumes where the last one stopped without sending an acknowledged event again; a
 * cancelled job says so; hosts outside the allow list are refused at SubmitJob.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { repoRoot } from "../support/paths.js";
import { sleep, until } from "../support/wait.js";
import { WebhookPolicy } from "../../coordinator/webhooks/policy.js";
import { verifySignature } from "../../coordinator/webhooks/events.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import { WEBHOOK_CURSORS_BUCKET, WebhookDeliverer } from "../../coordinator/webhooks/deliverer.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import type { JobRecord } from "../../coordinator/dispatch/job-record.js";

const SECRET = "webhook-test-secret-0123456789";

interface Received {
  id: string;
  type: string;
  body: string;
  headers: Record<string, string | string[] | undefined>;
  at: number;
  /** What the receiver answered (0: it never answered, the sender timed out first). */
  status: number;
}

/** A webhook receiver: `answer` picks the status and delay of each request from its event and attempt. */
class Receiver {
  readonly requests: Received[] = [];
  private server: Server | undefined;
  port = 0;
  answer: (e: { id: string; type: string }, attempt: number) => { status: number; delayMs?: number } = () => ({
    status: 200,
  });

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const e = JSON.parse(body) as { id: string; type: string };
        const attempt = this.requests.filter((r) => r.id === e.id).length + 1;
        const rec: Received = { id: e.id, type: e.type, body, headers: req.headers, at: Date.now(), status: 0 };
        this.requests.push(rec);
        const { status: code, delayMs = 0 } = this.answer(e, attempt);
        setTimeout(() => {
          if (res.destroyed || req.socket.destroyed) return; // the sender gave up on this attempt
          rec.status = code;
          res.writeHead(code).end();
        }, delayMs);
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  url(p = "/hook"): string {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  /** Events acknowledged (2xx), in the order they were. */
  accepted(jobId: string): Received[] {
    return this.requests.filter((r) => r.status >= 200 && r.status < 300 && r.id.startsWith(`${jobId}.`));
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

let farm: TestFarm;
let client: JobServiceClient;
let image: Buffer;
const receiver = new Receiver();

before(async () => {
  await receiver.start();
  image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  farm = await startTestFarm({
    nodes: true,
    webhooks: {
      policy: new WebhookPolicy({ allow: [`127.0.0.1:${receiver.port}`], secret: SECRET, perTenantSecrets: false }),
      delivery: { retryBaseMs: 50, retryMaxMs: 800, maxAttempts: 12, timeoutMs: 1000 },
    },
  });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});

after(async () => {
  client?.close();
  await farm?.stop();
  await receiver.stop();
});

/** Three sections (window 3: 9 frames a section). */
const request = (webhookUrl?: string): SubmitJobRequest => ({
  image: { source: { $case: "data", value: image } },
  settings: {
    prompt: "a lighthouse",
    length: { $case: "numFrames", value: 25 },
    mode: 0,
    steps: 2,
    resolution: 64,
    latentWindowSize: 3,
  },
  bundle: "",
  priority: 0,
  idempotencyKey: "",
  keyframes: [],
  loras: [],
  ...(webhookUrl !== undefined ? { webhookUrl } : {}),
});

const submit = (req: SubmitJobRequest): Promise<Job> =>
  new Promise((resolve, reject) => client.submitJob(req, (err, res) => (err ? reject(err) : resolve(res.job!))));

const JOB_EVENTS = [
  "job.queued",
  "job.running",
  "job.section_done",
  "job.section_done",
  "job.section_done",
  "job.succeeded",
];

function checkSigned(r: Received): void {
  assert.equal(r.headers["content-type"], "application/json");
  assert.equal(r.headers["framefarm-event-id"], r.id);
  assert.equal(r.headers["framefarm-event-type"], r.type);
  const ok = verifySignature(
    SECRET,
    {
      signature: r.headers["framefarm-signature"] as string,
      timestamp: r.headers["framefarm-timestamp"] as string,
    },
    r.body,
  );
  assert.ok(ok, `signature of ${r.id}`);
}

test("a job's events arrive signed, in order and once, through failures, delays and timeouts", async () => {
  // First attempt of every event: 500. Second: a timeout (slower than the sender waits) for
  // sections, a slow but successful answer for the rest. Then: accepted.
  receiver.answer = (e, attempt) =>
    attempt === 1
      ? { status: 500 }
      : attempt === 2 && e.type === "job.section_done"
        ? { status: 200, delayMs: 1500 }
        : { status: 200, delayMs: attempt === 2 ? 200 : 0 };
  const job = await submit(request(receiver.url("/hook?job=a")));
  await until("the succeeded event", () => receiver.accepted(job.id).some((r) => r.type === "job.succeeded"), 90_000);

  const accepted = receiver.accepted(job.id);
  assert.deepEqual(
    accepted.map((r) => r.type),
    JOB_EVENTS,
  );
  assert.deepEqual(
    accepted.map((r) => r.id),
    JOB_EVENTS.map((_, i) => `${job.id}.${i + 1}`),
  );
  const bodies = accepted.map((r) => JSON.parse(r.body) as Record<string, unknown>);
  assert.deepEqual(
    bodies.map((b) => [b["sequence"], b["state"], b["section"], b["sections_done"], b["sections_total"]]),
    [
      [1, "QUEUED", undefined, 0, 3],
      [2, "RUNNING", undefined, 0, 3],
      [3, "RUNNING", 0, 1, 3],
      [4, "RUNNING", 1, 2, 3],
      [5, "RUNNING", 2, 3, 3],
      [6, "SUCCEEDED", undefined, 3, 3],
    ],
  );
  for (const r of receiver.requests.filter((q) => q.id.startsWith(`${job.id}.`))) checkSigned(r);

  // Every event was tried again after its failure, with the backoff between; sections three times.
  for (const id of accepted.map((r) => r.id)) {
    const tries = receiver.requests.filter((r) => r.id === id);
    const section = tries[0]!.type === "job.section_done";
    assert.equal(tries.length, section ? 3 : 2, `attempts of ${id}`);
    assert.deepEqual(
      tries.map((t) => t.status),
      section ? [500, 0, 200] : [500, 200],
    );
    assert.ok(tries[1]!.at - tries[0]!.at >= 45, `backoff before the second attempt of ${id}`);
    if (section) assert.ok(tries[2]!.at - tries[1]!.at >= 1000, `timeout and backoff before the third of ${id}`);
    // Each attempt is signed afresh: the same body, its own timestamp.
    assert.ok(tries.every((t) => t.body === tries[0]!.body));
  }
  // The delivery cursor in the bus's KV says every event is done.
  const cursors = await farm.bus.kv(WEBHOOK_CURSORS_BUCKET);
  await until("the cursor", async () => {
    const c = await cursors.get(job.id);
    return c !== null && jsonCodec<{ done: number }>().decode(c.value).done === 6;
  });
});

test("after a coordinator restart, delivery resumes with the first event not acknowledged and repeats none", async () => {
  // Accept the first two events; refuse the rest until the coordinator has been restarted.
  let restarted = false;
  receiver.answer = (e) => ({
    status: restarted || Number(e.id.split(".").pop()) <= 2 ? 200 : 503,
  });
  const job = await submit(request(receiver.url()));
  await until(
    "the job to succeed",
    async () => (await readJob(farm.jobs, job.id))?.record.state === "SUCCEEDED",
    90_000,
  );
  await until("a refused attempt of the third event", () =>
    receiver.requests.some((r) => r.id === `${job.id}.3` && r.status === 503),
  );
  await farm.restartCoordinator();
  client.close();
  client = new JobServiceClient(farm.address, credentials.createInsecure());
  const before = receiver.requests.length;
  restarted = true;
  await until("the succeeded event", () => receiver.accepted(job.id).some((r) => r.type === "job.succeeded"), 30_000);
  const accepted = receiver.accepted(job.id);
  assert.deepEqual(
    accepted.map((r) => r.type),
    JOB_EVENTS,
  );
  assert.deepEqual(
    accepted.map((r) => r.id),
    JOB_EVENTS.map((_, i) => `${job.id}.${i + 1}`),
    "each event acknowledged exactly once, in order",
  );
  const after = receiver.requests.slice(before).filter((r) => r.id.startsWith(`${job.id}.`));
  assert.ok(after.length > 0);
  assert.ok(
    after.every((r) => Number(r.id.split(".").pop()) >= 3),
    `sent again after the restart: ${after.map((r) => r.id).join(", ")}`,
  );
  // Nothing more arrives later (the new coordinator's start scan found nothing else to send).
  await sleep(300);
  assert.equal(receiver.accepted(job.id).length, JOB_EVENTS.length);
});

test("a cancelled job's last event is job.cancelled", async () => {
  receiver.answer = () => ({ status: 204 });
  const job = await submit(request(receiver.url()));
  await new Promise<void>((resolve, reject) =>
    client.cancelJob({ id: job.id }, (err) => (err ? reject(err) : resolve())),
  );
  await until("the cancelled event", () => receiver.accepted(job.id).some((r) => r.type === "job.cancelled"));
  const types = receiver.accepted(job.id).map((r) => r.type);
  assert.equal(types[0], "job.queued");
  assert.equal(types.at(-1), "job.cancelled");
  assert.equal(types.filter((t) => t === "job.cancelled").length, 1);
});

test("webhook hosts outside the allow list are INVALID_ARGUMENT naming the host, and store nothing", async () => {
  const beforeSnap = await farm.snapshot();
  for (const [url, host] of [
    ["http://example.com/hook", "example.com"],
    [`http://127.0.0.1:${receiver.port + 1}/hook`, `127.0.0.1:${receiver.port + 1}`],
    [`http://localhost:${receiver.port}/hook`, `localhost:${receiver.port}`],
    [`http://[::1]:${receiver.port}/hook`, `[::1]:${receiver.port}`],
    ["http://169.254.169.254/latest/meta-data/", "169.254.169.254"],
  ] as const) {
    await assert.rejects(submit(request(url)), (err: ServiceError) => {
      assert.equal(err.code, status.INVALID_ARGUMENT, url);
      assert.ok(err.details.includes(`webhook host ${host} is not allowed`), err.details);
      return true;
    });
  }
  await assert.rejects(submit(request("file:///etc/passwd")), (err: ServiceError) => {
    assert.equal(err.code, status.INVALID_ARGUMENT);
    return true;
  });
  // No job, idempotency key or object of a new job (a cancelled job's late outputs may still go).
  const afterSnap = await farm.snapshot();
  assert.deepEqual(afterSnap.jobs, beforeSnap.jobs);
  assert.deepEqual(afterSnap.idempotency, beforeSnap.idempotency);
  assert.ok(afterSnap.objects.every((o) => beforeSnap.jobs.includes(o.split("/")[1]!)));
});

test("an event refused past the attempt limit is given up and the next one goes; tenants sign with their own secret", async () => {
  const bus = new MemoryBus();
  const jobs = await bus.kv(JOBS_BUCKET);
  const record = {
    spec: { jobId: "j1" },
    state: "RUNNING",
    tasks: [],
    taskStates: {},
    attempts: {},
    createdAt: "",
    updatedAt: "",
    webhook: {
      url: receiver.url("/limit"),
      tenant: "acme",
      events: [1, 2].map((seq) => ({
        seq,
        type: seq === 1 ? "job.queued" : "job.running",
        at: "",
        state: "RUNNING",
        sectionsDone: 0,
        sectionsTotal: 0,
      })),
    },
  } as unknown as JobRecord;
  await jobs.create("j1", jsonCodec<JobRecord>().encode(record));
  receiver.answer = (e) => ({ status: e.id === "j1.1" ? 410 : 200 });
  const policy = new WebhookPolicy({ allow: [`127.0.0.1:${receiver.port}`], secret: SECRET, perTenantSecrets: true });
  const d = await WebhookDeliverer.start(bus, policy, { retryBaseMs: 10, maxAttempts: 3, timeoutMs: 1000 });
  try {
    await until("the second event", () => receiver.accepted("j1").some((r) => r.id === "j1.2"));
    assert.equal(receiver.requests.filter((r) => r.id === "j1.1").length, 3);
    const cursor = await (await bus.kv(WEBHOOK_CURSORS_BUCKET)).get("j1");
    await until("the cursor", async () => {
      const c = await (await bus.kv(WEBHOOK_CURSORS_BUCKET)).get("j1");
      return c !== null && jsonCodec<{ done: number }>().decode(c.value).done === 2;
    });
    assert.ok(cursor !== null);
    const c = jsonCodec<{ done: number; abandoned?: string[] }>().decode(
      (await (await bus.kv(WEBHOOK_CURSORS_BUCKET)).get("j1"))!.value,
    );
    assert.deepEqual(c, { done: 2, abandoned: ["j1.1"] });
    const r = receiver.accepted("j1")[0]!;
    const header = {
      signature: r.headers["framefarm-signature"] as string,
      timestamp: r.headers["framefarm-timestamp"] as string,
    };
    assert.equal(verifySignature(SECRET, header, r.body), false, "not the farm's secret");
    assert.equal(verifySignature(policy.secretFor("acme"), header, r.body), true, "the tenant's");
  } finally {
    await d.stop();
    await bus.close();
  }
});
