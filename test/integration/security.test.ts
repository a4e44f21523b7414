/**
 * Security of the public API on real servers (nats-server, s3rver, node loops running the tiny
 * bundle): tokens and tenants (a tenant cannot see, watch, cancel, list or download another's
 * jobs, nor reuse its idempotency keys or uploads), presigned URLs that expire, TLS with a
 * self-signed certificate, and the client CLI's --token / --ca.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, JobState, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { startNatsServer, startS3Server } from "../../coordinator/cli/local-servers.js";
import { cliPath, repoRoot } from "../support/paths.js";
import { bearer, smallJobRequest, unary } from "../support/grpc.js";

const run = promisify(execFile);
const ACME = "acme-token-0123456789abcdef";
const BETA = "beta-token-0123456789abcdef";
const URL_EXPIRY_S = 2;
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
let farm: TestFarm;
let client: JobServiceClient;
let tmp: string;

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-security-"));
  farm = await startTestFarm({
    auth: TokenAuth.fromEntries([
      { tenant: "acme", token: ACME },
      { tenant: "beta", token: BETA },
    ]),
    urlExpirySeconds: URL_EXPIRY_S,
    nodes: true,
  });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});

after(async () => {
  client.close();
  await farm.stop();
  await rm(tmp, { recursive: true, force: true });
});

const as = bearer;
const request = (over: Partial<SubmitJobRequest> = {}): SubmitJobRequest => smallJobRequest(png, over);
const submit = (token: string | null, over: Partial<SubmitJobRequest> = {}) =>
  unary<{ job?: Job; deduplicated: boolean }>((cb) => client.submitJob(request(over), as(token), cb));
const getJob = (token: string | null, id: string) =>
  unary<{ job?: Job }>((cb) => client.getJob({ id }, as(token), cb)).then((r) => r.job!);
const cancelJob = (token: string | null, id: string) =>
  unary<{ job?: Job }>((cb) => client.cancelJob({ id }, as(token), cb)).then((r) => r.job!);
const listJobs = (token: string | null) =>
  unary<{ jobs: Job[] }>((cb) => client.listJobs({ states: [], pageSize: 500, pageToken: "" }, as(token), cb)).then(
    (r) => r.jobs,
  );
const watchJob = (token: string | null, id: string): Promise<Job[]> =>
  new Promise((resolve, reject) => {
    const got: Job[] = [];
    const s = client.watchJob({ id }, as(token));
    s.on("data", (e: { job?: Job }) => got.push(e.job!));
    s.on("end", () => resolve(got));
    s.on("error", reject);
  });
const rejects = (p: Promise<unknown>, code: status, pattern: RegExp): Promise<void> =>
  assert.rejects(p, (e: unknown) => {
    assert.equal(status[(e as ServiceError).code], status[code], (e as ServiceError).details);
    assert.match((e as ServiceError).details, pattern);
    return true;
  });

async function finished(token: string, id: string): Promise<Job> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const job = await getJob(token, id);
    if (
      job.state === JobState.JOB_STATE_SUCCEEDED ||
      job.state === JobState.JOB_STATE_FAILED ||
      job.state === JobState.JOB_STATE_CANCELLED
    )
      return job;
    if (Date.now() > deadline) assert.fail(`job ${id} did not finish`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("every RPC needs a valid token", async () => {
  for (const token of [null, "wrong-token-0123456789abcdef"]) {
    const why = token === null ? /no credentials/ : /not valid for this farm/;
    await rejects(submit(token), status.UNAUTHENTICATED, why);
    await rejects(getJob(token, "any"), status.UNAUTHENTICATED, why);
    await rejects(watchJob(token, "any"), status.UNAUTHENTICATED, why);
    await rejects(cancelJob(token, "any"), status.UNAUTHENTICATED, why);
    await rejects(listJobs(token), status.UNAUTHENTICATED, why);
  }
  assert.deepEqual((await farm.snapshot()).jobs, []);
});

test("a tenant cannot see, watch, cancel, list or download another tenant's job", async () => {
  const { job } = await submit(ACME, { idempotencyKey: "nightly-1" });
  const done = await finished(ACME, job!.id);
  assert.equal(done.state, JobState.JOB_STATE_SUCCEEDED, done.error);
  const id = done.id;
  // NOT_FOUND with the very message a job that does not exist gets: existence does not leak.
  const missing = "00000000-0000-4000-8000-000000000000";
  const notFound = async (p: Promise<unknown>, asked: string): Promise<void> => {
    const e = (await p.then(
      () => assert.fail("accepted"),
      (x: unknown) => x,
    )) as ServiceError;
    assert.equal(e.code, status.NOT_FOUND);
    assert.equal(e.details, `job ${asked} does not exist`);
  };
  await notFound(getJob(BETA, id), id);
  await notFound(getJob(BETA, missing), missing);
  await notFound(watchJob(BETA, id), id);
  await notFound(cancelJob(BETA, id), id);
  assert.deepEqual(
    (await listJobs(BETA)).map((j) => j.id),
    [],
  );
  // The owner still sees it, unharmed by the cancel attempt, and only the owner gets its URL.
  assert.deepEqual(
    (await listJobs(ACME)).map((j) => j.id),
    [id],
  );
  assert.equal((await getJob(ACME, id)).state, JobState.JOB_STATE_SUCCEEDED);
  assert.equal((await watchJob(ACME, id)).at(-1)!.state, JobState.JOB_STATE_SUCCEEDED);
  const url = (await getJob(ACME, id)).videoUrl;
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(
    Buffer.from(await res.arrayBuffer())
      .subarray(4, 8)
      .toString(),
    "ftyp",
  );

  // Idempotency keys are per tenant: the same key from beta is a new job, from acme the old one.
  const again = await submit(ACME, { idempotencyKey: "nightly-1" });
  assert.deepEqual([again.job!.id, again.deduplicated], [id, true]);
  const beta = await submit(BETA, { idempotencyKey: "nightly-1" });
  assert.equal(beta.deduplicated, false);
  assert.notEqual(beta.job!.id, id);
  assert.deepEqual(
    (await listJobs(BETA)).map((j) => j.id),
    [beta.job!.id],
  );
  await notFound(getJob(ACME, beta.job!.id), beta.job!.id);
  await cancelJob(BETA, beta.job!.id);
});

test("presigned video URLs expire, and s3rver refuses the expired one", async () => {
  const { job } = await submit(ACME);
  const done = await finished(ACME, job!.id);
  assert.equal(done.state, JobState.JOB_STATE_SUCCEEDED, done.error);
  const expiresAt = Number(done.videoUrlExpiresAt!.seconds) * 1000;
  assert.ok(
    Math.abs(expiresAt - (Date.now() + URL_EXPIRY_S * 1000)) < 1500,
    "video_url_expires_at is now + urlExpirySeconds",
  );
  assert.match(done.videoUrl, new RegExp(`X-Amz-Expires=${URL_EXPIRY_S}&`));
  assert.equal((await fetch(done.videoUrl)).status, 200);
  await new Promise((r) => setTimeout(r, (URL_EXPIRY_S + 1.5) * 1000));
  const res = await fetch(done.videoUrl);
  assert.equal(res.status, 403);
  assert.match(await res.text(), /Request has expired/);
});

test("a tenant reads its own uploads/<tenant>/ objects and no one else's", async () => {
  await farm.store.put("uploads/acme/start.png", png);
  const { job } = await submit(ACME, { image: { source: { $case: "objectKey", value: "uploads/acme/start.png" } } });
  assert.ok(job!.id.length > 0);
  await rejects(
    submit(BETA, { image: { source: { $case: "objectKey", value: "uploads/acme/start.png" } } }),
    status.PERMISSION_DENIED,
    /must be under uploads\/beta\//,
  );
  // Object keys of a job come from its UUID, never from the request's text.
  const keys = await farm.store.list("");
  assert.ok(keys.length > 1);
  for (const k of keys)
    assert.match(
      k,
      /^(uploads\/acme\/start\.png|jobs\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\/[A-Za-z0-9._\/-]+)$/,
    );
  await cancelJob(ACME, job!.id);
});

test("TLS: a self-signed certificate, trusted through --ca; plaintext and untrusted clients are refused", async () => {
  const cert = path.join(tmp, "cert.pem");
  const key = path.join(tmp, "key.pem");
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  const tokens = path.join(tmp, "tokens.txt");
  await writeFile(tokens, `# tenant:token\nacme:${ACME}\n`);
  const tlsFarm = await startTestFarm({
    auth: await TokenAuth.fromFile(tokens),
    tls: { cert: await readFile(cert), key: await readFile(key) },
  });
  // By name, as TLS clients should (an IP address is not a valid TLS server name).
  const address = tlsFarm.address.replace("127.0.0.1", "localhost");
  try {
    const list = (c: JobServiceClient, token: string | null) =>
      unary<{ jobs: Job[] }>((cb) =>
        c.listJobs({ states: [], pageSize: 0, pageToken: "" }, as(token), { deadline: Date.now() + 5000 }, cb),
      );
    const trusted = new JobServiceClient(address, credentials.createSsl(await readFile(cert)));
    const plain = new JobServiceClient(address, credentials.createInsecure());
    const untrusted = new JobServiceClient(address, credentials.createSsl());
    try {
      assert.deepEqual((await list(trusted, ACME)).jobs, []);
      await rejects(list(trusted, null), status.UNAUTHENTICATED, /no credentials/);
      await assert.rejects(
        list(plain, ACME),
        (e: ServiceError) => e.code === status.UNAVAILABLE || e.code === status.DEADLINE_EXCEEDED,
      );
      await assert.rejects(
        list(untrusted, ACME),
        (e: ServiceError) => e.code === status.UNAVAILABLE && /certificate|SSL|TLS|handshake/i.test(e.details),
      );
    } finally {
      for (const c of [trusted, plain, untrusted]) c.close();
    }

    // The CLI: --ca and --token (or FRAMEFARM_TOKEN); without a token it exits with UNAUTHENTICATED.
    const cli = (args: string[], env: Record<string, string> = {}) =>
      run(process.execPath, [cliPath(), ...args], { env: { ...process.env, FRAMEFARM_TOKEN: "", ...env } });
    const ok = await cli(["jobs", "--server", address, "--ca", cert, "--token", ACME]);
    assert.equal(ok.stdout, "");
    const viaEnv = await cli(["cancel", "--server", address, "--ca", cert, "no-such-job"], {
      FRAMEFARM_TOKEN: ACME,
    }).catch((e: { code: number; stderr: string }) => e);
    assert.equal((viaEnv as { code: number }).code, 2);
    assert.match((viaEnv as { stderr: string }).stderr, /error \[NOT_FOUND\]: job no-such-job does not exist/);
    const denied = await cli(["jobs", "--server", address, "--ca", cert]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal((denied as { code: number }).code, 1);
    assert.match((denied as { stderr: string }).stderr, /error \[UNAUTHENTICATED\]: no credentials/);
  } finally {
    await tlsFarm.stop();
  }
});

test("framefarm coordinator: --tokens and --tls-cert/--tls-key from the command line; loud when open", async () => {
  const cert = path.join(tmp, "cli-cert.pem");
  const key = path.join(tmp, "cli-key.pem");
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=DNS:localhost",
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  const tokens = path.join(tmp, "cli-tokens.json");
  await writeFile(tokens, JSON.stringify({ acme: ACME }));
  const nats = await startNatsServer(path.join(tmp, "cli-nats"));
  const s3 = await startS3Server(path.join(tmp, "cli-s3"));
  /** Starts the coordinator; resolves with its address and stderr once it listens. */
  const coordinator = (extra: string[]) =>
    new Promise<{ address: string; stderr: () => string; stop: () => Promise<void> }>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [
          cliPath(),
          "coordinator",
          "--nats",
          `nats://${nats.host}:${nats.port}`,
          "--s3",
          `${s3.host}:${s3.port}`,
          "--port",
          "0",
          "--http-port",
          "0",
          ...extra,
        ],
        { env: { ...process.env, FRAMEFARM_TOKENS_FILE: "" } },
      );
      let out = "";
      let err = "";
      const stop = () =>
        new Promise<void>((r) =>
          child.exitCode !== null ? r() : (child.once("exit", () => r()), child.kill("SIGTERM")),
        );
      child.stderr.on("data", (b: Buffer) => (err += b.toString()));
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
        const m = /gRPC listening on 127\.0\.0\.1:(\d+)/.exec(out);
        if (m !== null) resolve({ address: `localhost:${m[1]}`, stderr: () => err, stop });
      });
      child.once("exit", (code) => reject(new Error(`coordinator exited ${code}: ${err}`)));
    });
  try {
    const secured = await coordinator(["--tokens", tokens, "--tls-cert", cert, "--tls-key", key]);
    try {
      assert.doesNotMatch(secured.stderr(), /WARNING/);
      const cli = (args: string[]) =>
        run(process.execPath, [cliPath(), ...args], { env: { ...process.env, FRAMEFARM_TOKEN: "" } });
      assert.equal((await cli(["jobs", "--server", secured.address, "--ca", cert, "--token", ACME])).stdout, "");
      const denied = await cli(["jobs", "--server", secured.address, "--ca", cert, "--token", BETA]).catch(
        (e: { code: number; stderr: string }) => e,
      );
      assert.match((denied as { stderr: string }).stderr, /error \[UNAUTHENTICATED\]: the bearer token is not valid/);
    } finally {
      await secured.stop();
    }
    const open = await coordinator([]);
    await open.stop();
    assert.match(open.stderr(), /WARNING: no tokens configured .* the gRPC API is OPEN/);
  } finally {
    await s3.stop();
    await nats.stop();
  }
});
