/**
 * Fairness on a real farm (`framefarm cluster` with tokens: nats-server, s3rver, a coordinator, a
 * text/image/VAE node and a denoise node as processes): tenant acme floods the farm up to its
 * queued-job limit (the next submission is RESOURCE_EXHAUSTED naming the limit), then tenant beta
 * submits one job. beta's job must start at once and finish while most of acme's backlog still
 * waits (oldest-first would run it last), acme never has more tasks out than its running limit
 * (read from the nodes' own task times in the job records), and /metrics shows both per tenant.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import type { NatsBus } from "../../shared/bus/nats-bus.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { readJob, type JobRecord } from "../../coordinator/dispatch/job-record.js";
import { connectClusterNats, natsUsersFileIn } from "../support/cluster-nats.js";
import { bearer, smallJobRequest, unary } from "../support/grpc.js";
import { cliPath, repoRoot } from "../support/paths.js";
import { until } from "../support/wait.js";

const TOKENS = {
  acme: "acme-token-0123456789abcdef",
  beta: "beta-token-0123456789abcdef",
  ops: "ops-token-0123456789ab",
};
const MAX_QUEUED = 6;
const MAX_RUNNING = 2;
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));

let dir: string;
let cluster: ChildProcess;
let client: JobServiceClient;
let bus: NatsBus;
let httpPort: number;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-fairness-"));
  const tokens = path.join(dir, "tokens");
  await writeFile(
    tokens,
    Object.entries(TOKENS)
      .map(([t, k]) => `${t}:${k}\n`)
      .join(""),
  );
  cluster = spawn(
    process.execPath,
    [
      cliPath(),
      "cluster",
      "--http-port",
      "0",
      "--nodes",
      "1",
      "--denoise-nodes",
      "1",
      "--tokens",
      tokens,
      "--operators",
      "ops",
      "--max-queued-per-tenant",
      String(MAX_QUEUED),
      "--max-running-per-tenant",
      String(MAX_RUNNING),
    ],
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, FRAMEFARM_LOG_LEVEL: process.env["FRAMEFARM_LOG_LEVEL"] ?? "warn" },
    },
  );
  let out = "";
  const addresses = await new Promise<{ grpc: string; nats: string; http: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster did not start: ${out}`)), 60_000);
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const grpc = /gRPC listening on (\S+)/.exec(out);
      const nats = /NATS on (\S+),/.exec(out);
      const http = /dashboard on http:\/\/[\d.]+:(\d+)/.exec(out);
      if (grpc && nats && http) {
        clearTimeout(timer);
        resolve({ grpc: grpc[1]!, nats: nats[1]!, http: Number(http[1]) });
      }
    });
    cluster.once("exit", (code) => reject(new Error(`cluster exited ${code}: ${out}`)));
  });
  client = new JobServiceClient(addresses.grpc, credentials.createInsecure());
  bus = await connectClusterNats(addresses.nats, natsUsersFileIn(out)!);
  httpPort = addresses.http;
});

after(async () => {
  client?.close();
  await bus?.close();
  if (cluster !== undefined && cluster.exitCode === null) {
    const exited = new Promise((r) => cluster.once("exit", r));
    cluster.kill("SIGTERM");
    await exited;
  }
  await rm(dir, { recursive: true, force: true });
});

const submit = async (tenant: keyof typeof TOKENS, seed: number): Promise<Job> =>
  (
    await unary<{ job?: Job }>((cb) =>
      client.submitJob(
        smallJobRequest(png, { settings: { ...smallJobRequest(png).settings!, seed: BigInt(seed) } }),
        bearer(TOKENS[tenant]),
        cb,
      ),
    )
  ).job!;

const metrics = async (): Promise<string> =>
  (await fetch(`http://127.0.0.1:${httpPort}/metrics`, { headers: { authorization: `Bearer ${TOKENS.ops}` } })).text();

/** When a job's first task started and its last one finished, from the nodes' reports in its record. */
function span(r: JobRecord): { start: number; end: number } {
  const log = r.taskLog ?? [];
  return {
    start: Math.min(...log.map((e) => Date.parse(e.startedAt))),
    end: Math.max(...log.map((e) => Date.parse(e.finishedAt))),
  };
}

/** The most task attempts running at one instant among these (from their start and end times). */
function peakConcurrency(records: JobRecord[]): number {
  const edges = records
    .flatMap((r) => r.taskLog ?? [])
    .flatMap((e) => [
      { at: Date.parse(e.startedAt), d: 1 },
      { at: Date.parse(e.finishedAt), d: -1 },
    ])
    .sort((a, b) => a.at - b.at || a.d - b.d);
  let n = 0;
  let peak = 0;
  for (const e of edges) peak = Math.max(peak, (n += e.d));
  return peak;
}

test("one tenant floods, another's job starts at once and finishes ahead of the backlog; limits and metrics per tenant", async (t) => {
  const flood: Job[] = [];
  for (let i = 0; i < MAX_QUEUED; i++) flood.push(await submit("acme", 100 + i));
  await assert.rejects(submit("acme", 999), (e: ServiceError) => {
    assert.equal(e.code, status.RESOURCE_EXHAUSTED);
    assert.match(e.details, /tenant acme has 6 unfinished jobs.*--max-queued-per-tenant 6/);
    return true;
  });
  const submittedAt = Date.now();
  const lone = await submit("beta", 7);
  const m = await metrics();
  assert.match(m, /framefarm_tenant_refusals_total\{tenant="acme",limit="max-queued-per-tenant"\} 1/);
  assert.match(m, /framefarm_tenant_jobs\{tenant="acme",state="(queued|running)"\} [1-6]/);
  assert.match(m, /framefarm_tenant_tasks\{tenant="acme",state="running"\} [0-2]\n/);

  const jobs = await bus.kv(JOBS_BUCKET);
  const record = async (id: string): Promise<JobRecord> => (await readJob(jobs, id))!.record;
  const ended = async (id: string): Promise<boolean> =>
    ["SUCCEEDED", "FAILED", "CANCELLED"].includes((await record(id)).state);
  await until("beta's job ended", () => ended(lone.id), 240_000, 200);
  const acmeDoneWhenBetaEnded = (await Promise.all(flood.map((j) => ended(j.id)))).filter(Boolean).length;
  await until(
    "acme's jobs ended",
    async () => (await Promise.all(flood.map((j) => ended(j.id)))).every(Boolean),
    600_000,
    500,
  );

  const beta = await record(lone.id);
  const acme = await Promise.all(flood.map((j) => record(j.id)));
  assert.equal(beta.state, "SUCCEEDED", beta.error);
  for (const r of acme) assert.equal(r.state, "SUCCEEDED", r.error);
  // Oldest first would have run beta's job after all 6 of acme's; in turn, it runs beside them.
  assert.ok(acmeDoneWhenBetaEnded <= 3, `beta's job ended after ${acmeDoneWhenBetaEnded} of acme's 6`);
  const acmeEnds = acme.map((r) => span(r).end).sort((a, b) => a - b);
  assert.ok(span(beta).end < acmeEnds[3]!, "beta's job ended before acme's fourth");
  // It started within a bound counted in jobs, whatever the machine's speed: before the first task of
  // acme's fourth job (oldest first would start it after all six of acme's), and within a minute.
  const created = Date.parse(beta.createdAt);
  const waited = span(beta).start - created;
  const acmeStarts = acme.map((r) => span(r).start).sort((a, b) => a - b);
  assert.ok(span(beta).start < acmeStarts[3]!, "beta's job started before acme's fourth");
  assert.ok(waited < 60_000, `beta's first task started ${waited} ms after the job was created`);
  const overtaking = acme
    .flatMap((r) => r.taskLog ?? [])
    .filter((e) => Date.parse(e.startedAt) > created && Date.parse(e.startedAt) < span(beta).start).length;
  assert.ok(peakConcurrency(acme) <= MAX_RUNNING, `acme ran ${peakConcurrency(acme)} tasks at once`);
  t.diagnostic(
    `beta: first task ${waited} ms after the job was created (SubmitJob took ${created - submittedAt} ms, ${overtaking} acme tasks began meanwhile), done after ${acmeDoneWhenBetaEnded} of acme's ${MAX_QUEUED} jobs; ` +
      `acme's peak: ${peakConcurrency(acme)} tasks at once`,
  );

  const after = await metrics();
  assert.doesNotMatch(after, /framefarm_tenant_jobs\{tenant="acme"/, "no unfinished jobs left to count");
  // Operators are held to the same queued-job limit; their priority is not capped.
  const urgent = await unary<{ job?: Job }>((cb) =>
    client.submitJob(smallJobRequest(png, { priority: 50 }), bearer(TOKENS.ops), cb),
  );
  assert.equal(urgent.job!.priority, 50);
  await until("the operator's job ended", () => ended(urgent.job!.id), 120_000, 200);
  assert.equal((await record(urgent.job!.id)).state, "SUCCEEDED");
});
