/**
 * Tokens changed while the coordinator runs, on real servers (nats-server, s3rver) through a real
 * gRPC client and the dashboard's HTTP: a token added works, a revoked one is refused within
 * seconds (open WatchJob and event streams end), a malformed file changes nothing; and the
 * metrics role: a scraper's token opens /metrics and nothing else.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import { LOOPBACK, startNatsServer, startS3Server, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { securityOptions, startCoordinator, type RunningCoordinator } from "../../coordinator/cli/coordinator.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { until } from "../support/wait.js";
import { bearer, smallJobRequest } from "../support/grpc.js";

const OPS = "ops-token-0123456789abcdef";
const ACME = "acme-token-0123456789abcdef";
const ACME2 = "acme-token-2-0123456789abcdef";
const PROM = "prom-token-0123456789abcdef";
let tmp: string;
let tokensFile: string;
let servers: LocalServer[] = [];
let coordinator: RunningCoordinator;
let client: JobServiceClient;
let base: string;

const write = async (lines: string[]): Promise<void> => {
  // As an editor saves: a new file renamed over the old one.
  await writeFile(`${tokensFile}.new`, lines.join("\n") + "\n");
  await rename(`${tokensFile}.new`, tokensFile);
};

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-token-reload-"));
  tokensFile = path.join(tmp, "secret", "tokens");
  await mkdir(path.dirname(tokensFile));
  await write([`ops:${OPS}`, `acme:${ACME}`, `prom:${PROM}`]);
  const nats = await startNatsServer(path.join(tmp, "nats"));
  servers.push(nats);
  const s3 = await startS3Server(path.join(tmp, "s3"));
  servers.push(s3);
  coordinator = await startCoordinator(
    {
      nats: `nats://${nats.host}:${nats.port}`,
      s3: { host: s3.host, port: s3.port, tls: false, accessKey: "S3RVER", secretKey: "S3RVER", bucket: "framefarm" },
    },
    tinyBundleDir(),
    { host: LOOPBACK, port: 0, httpPort: 0 },
    await securityOptions({ tokens: tokensFile, operators: "ops", "metrics-tenants": "prom" }),
  );
  client = new JobServiceClient(`${LOOPBACK}:${coordinator.port}`, credentials.createInsecure());
  base = `http://${LOOPBACK}:${coordinator.httpPort}`;
});

after(async () => {
  client?.close();
  await coordinator?.stop();
  for (const s of servers.reverse()) await s.stop();
  servers = [];
  await rm(tmp, { recursive: true, force: true });
});

const as = bearer;
/** The gRPC status name of ListJobs with token ("OK" when it answers). */
const listJobs = (token: string): Promise<string> =>
  new Promise((resolve) =>
    client.listJobs({ states: [], pageSize: 10, pageToken: "" }, as(token), (e: ServiceError | null) =>
      resolve(e === null ? "OK" : `${status[e.code]}: ${e.details}`),
    ),
  );
const http = async (p: string, token: string): Promise<number> =>
  (await fetch(`${base}${p}`, { headers: { authorization: `Bearer ${token}` } })).status;

test("a scraper's token (--metrics-tenants) opens /metrics and nothing else", async () => {
  assert.equal(await http("/metrics", PROM), 200);
  assert.equal(await http("/metrics", OPS), 200, "operators scrape too");
  assert.equal(await http("/metrics", ACME), 401, "a tenant's token does not");
  assert.equal(await http("/api/state", PROM), 401, "not the dashboard's API");
  assert.deepEqual(
    await (await fetch(`${base}/api/session`, { headers: { authorization: `Bearer ${PROM}` } })).json(),
    {
      authorized: false,
    },
  );
  const post = await fetch(`${base}/api/nodes/x/drain`, {
    method: "POST",
    headers: { authorization: `Bearer ${PROM}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(post.status, 401, "nor its actions");
  assert.match(await listJobs(PROM), /^PERMISSION_DENIED: tenant prom may only scrape \/metrics/);
  const submit = await new Promise<ServiceError | null>((resolve) =>
    client.submitJob(
      { image: undefined, settings: undefined, bundle: "", priority: 0, idempotencyKey: "", keyframes: [], loras: [] },
      as(PROM),
      (e: ServiceError | null) => resolve(e),
    ),
  );
  assert.equal(submit?.code, status.PERMISSION_DENIED);
  assert.equal(await listJobs(ACME), "OK");
});

test("tokens added, rotated and revoked in the file take effect within seconds, without a restart", async () => {
  assert.equal(await listJobs(ACME), "OK");
  assert.match(await listJobs(ACME2), /^UNAUTHENTICATED/);
  // An open WatchJob stream of a token about to be revoked, on a job that stays queued (no nodes).
  const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  const { job } = await new Promise<{ job?: Job }>((resolve, reject) =>
    client.submitJob(smallJobRequest(png), as(ACME), (e: ServiceError | null, r?: { job?: Job }) =>
      e ? reject(e) : resolve(r!),
    ),
  );
  const watch = client.watchJob({ id: job!.id }, as(ACME));
  const watchEnd = new Promise<string>((resolve) => {
    watch.on("error", (e: ServiceError) => resolve(status[e.code]!));
    watch.on("end", () => resolve("end"));
    watch.on("data", (_: { job?: Job }) => undefined);
  });
  // Rotation: a second token for acme.
  await write([`ops:${OPS}`, `acme:${ACME}`, `acme:${ACME2}`, `prom:${PROM}`]);
  await until("the rotated token admitted", async () => (await listJobs(ACME2)) === "OK", 5_000, 50);
  assert.equal(await listJobs(ACME), "OK");
  assert.equal(await http("/api/state", OPS), 200);

  // A malformed file: everything stays as it was.
  await writeFile(tokensFile, `ops:${OPS}\nacme ${ACME2}\n`);
  await new Promise((r) => setTimeout(r, 1_000));
  assert.equal(await listJobs(ACME), "OK");
  assert.equal(await listJobs(ACME2), "OK");
  assert.equal(await http("/api/state", OPS), 200);

  // The events stream of an operator whose token is then revoked ends.
  const events = await fetch(`${base}/api/events`, { headers: { authorization: `Bearer ${OPS}` } });
  assert.equal(events.status, 200);
  const eventsEnd = (async () => {
    for await (const _ of events.body!) void _;
    return "end";
  })();

  // Revocation: the old acme token and the operator's token removed (another operator stays).
  const OPS2 = "ops-token-2-0123456789abcdef";
  const t0 = Date.now();
  await write([`ops:${OPS2}`, `acme:${ACME2}`, `prom:${PROM}`]);
  await until("the revoked token refused", async () => (await listJobs(ACME)).startsWith("UNAUTHENTICATED"), 5_000, 50);
  assert.ok(Date.now() - t0 < 5_000);
  await until(
    "the dashboard refuses the revoked operator",
    async () => (await http("/api/state", OPS)) === 401,
    5_000,
    50,
  );
  assert.equal(await http("/metrics", OPS), 401);
  assert.equal(await http("/api/state", OPS2), 200);
  assert.equal(await listJobs(ACME2), "OK");
  // Open streams of revoked tokens end: gRPC with UNAUTHENTICATED, the event stream closed.
  assert.equal(await watchEnd, "UNAUTHENTICATED");
  assert.equal(await eventsEnd, "end");
});
