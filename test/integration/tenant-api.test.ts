/**
 * The submit page's HTTP API (/api/tenant/...) on the in-process bus, over real HTTP, with tokens:
 * any tenant's token opens it and each sees its own jobs; requests are jobs.proto's JSON form read
 * strictly and pass SubmitJob's own checks; errors carry gRPC status names and codes; the bucket an
 * image gets comes from the server's table; a job submitted again keeps its settings and images
 * and gets a new seed; the live feed starts with the tenant's jobs and follows their changes.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import { submitOptions } from "../../coordinator/api/submit-options.js";
import type { BundleManifest } from "../../shared/bundle/manifest.js";
import { startDashboard, type Dashboard } from "../../coordinator/dashboard/dashboard.js";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import { silentLogger } from "../../shared/log/logger.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

const ACME = "acme-token-0123456789abcdef";
const ZETA = "zeta-token-0123456789abcdef";
const PROM = "prom-token-0123456789abcdef";
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));

let tmp: string;
let dispatcher: Dispatcher;
let dashboard: Dashboard;
let base: string;

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-tenant-api-"));
  const bus = new MemoryBus();
  const store = new LocalObjectStore(tmp);
  dispatcher = await Dispatcher.start(bus, store);
  const bundle = await openBundle(tinyBundleDir());
  const auth = TokenAuth.fromEntries([
    { tenant: "acme", token: ACME },
    { tenant: "zeta", token: ZETA },
    { tenant: "prom", token: PROM },
  ]);
  // No node: jobs stay queued, which is all these requests need.
  const jobs = new JobService({
    bus,
    store,
    dispatcher,
    manifest: bundle.manifest,
    bundleName: "tiny",
    auth,
    scrapeOnlyTenants: ["prom"],
  });
  dashboard = await startDashboard({
    bus,
    store,
    dispatcher,
    host: "127.0.0.1",
    port: 0,
    log: silentLogger(),
    authorize: auth.operatorGate([]),
    jobs,
  });
  base = `http://127.0.0.1:${dashboard.port}`;
});

after(async () => {
  await dashboard.stop();
  await dispatcher.stop();
  await rm(tmp, { recursive: true, force: true });
});

const headers = (token: string | null, json = false): Record<string, string> => ({
  ...(token !== null ? { authorization: `Bearer ${token}` } : {}),
  ...(json ? { "content-type": "application/json" } : {}),
});
const get = (p: string, token: string | null = ACME): Promise<Response> =>
  fetch(`${base}${p}`, { headers: headers(token) });
const post = (p: string, body: unknown, token: string | null = ACME): Promise<Response> =>
  fetch(`${base}${p}`, { method: "POST", headers: headers(token, true), body: JSON.stringify(body) });
const errorOf = async (r: Response): Promise<{ status: number; code: string; grpcCode: number; message: string }> => {
  const e = ((await r.json()) as { error: { code: string; grpcCode: number; message: string } }).error;
  return { status: r.status, ...e };
};

interface JobJson {
  id: string;
  state: string;
  settings: Record<string, unknown>;
  height: number;
  width: number;
  keyframeTimes?: number[];
}
const request = (settings: Record<string, unknown>) => ({
  image: { data: png.toString("base64") },
  settings: { prompt: "a lighthouse", seconds: 1, steps: 2, resolution: 64, ...settings },
});

test("any tenant's token opens the API; none, or a scraper's, does not", async () => {
  assert.deepEqual(await (await get("/api/tenant/session")).json(), { authorized: true, tenant: "acme" });
  const none = (await (await get("/api/tenant/session", null)).json()) as {
    authorized: boolean;
    error: { code: string };
  };
  assert.equal(none.authorized, false);
  assert.equal(none.error.code, "UNAUTHENTICATED");
  assert.deepEqual(await errorOf(await get("/api/tenant/options", null)), {
    status: 401,
    code: "UNAUTHENTICATED",
    grpcCode: 16,
    message: "no credentials: send the header authorization: Bearer <token>",
  });
  const scraper = await errorOf(await get("/api/tenant/options", PROM));
  assert.deepEqual([scraper.status, scraper.code, scraper.grpcCode], [403, "PERMISSION_DENIED", 7]);
  // A tenant's token does not open the operators' dashboard.
  assert.equal((await get("/api/state")).status, 401);
});

test("options come from the bundle; the bucket from the server's table", async () => {
  const o = (await (await get("/api/tenant/options")).json()) as {
    modes: { value: string; isDefault: boolean }[];
    caches: { value: string }[];
    vaeTiling: { label: string; help: string; isDefault: boolean };
    defaults: { latentWindowSize: number; seed: string };
    loras: { maxLoras: number; maxWeight: number; defaultWeight: number } | null;
  };
  // The tiny bundle names its LoRA targets: LoRAs are offered, with the farm's limits; a bundle
  // without them offers none.
  assert.deepEqual(o.loras && [o.loras.maxLoras, o.loras.maxWeight, o.loras.defaultWeight], [16, 100, 1]);
  const { manifest } = await openBundle(tinyBundleDir());
  const { lora_targets: _targets, ...withoutTargets } = manifest as unknown as Record<string, unknown>;
  assert.equal(submitOptions(withoutTargets as unknown as BundleManifest, "plain").loras, null);
  // A checkbox, off as validateRenderParams defaults it, saying what it trades.
  assert.equal(o.vaeTiling.isDefault, false);
  assert.match(o.vaeTiling.help, /lower peak GPU memory, slightly different frames/);
  assert.deepEqual(
    o.modes.map((m) => [m.value, m.isDefault]),
    [
      ["SAMPLING_MODE_INVERTED_ANTI_DRIFTING", true],
      ["SAMPLING_MODE_VANILLA", false],
    ],
  );
  // The tiny bundle has the step-cache transformer graphs: both step caches run.
  assert.deepEqual(
    o.caches.map((c) => c.value),
    ["none", "teacache", "magcache"],
  );
  assert.equal(o.defaults.latentWindowSize, 9);
  assert.equal(o.defaults.seed, "31337");
  for (const [w, h, r] of [
    [320, 240, 64],
    [1920, 1080, 640],
    [600, 1000, 320],
  ] as const)
    assert.deepEqual(
      await (await get(`/api/tenant/bucket?resolution=${r}&width=${w}&height=${h}`)).json(),
      findNearestBucket(h, w, r),
    );
  const bad = await errorOf(await get("/api/tenant/bucket?resolution=65&width=320&height=240"));
  assert.deepEqual([bad.status, bad.code], [400, "INVALID_ARGUMENT"]);
  assert.match(bad.message, /resolution must be a multiple of 16/);
});

test("a submission is SubmitJobRequest's JSON form, read strictly, with SubmitJob's checks", async () => {
  const unknown = await errorOf(await post("/api/tenant/jobs", request({ sharpness: 3 })));
  assert.deepEqual([unknown.status, unknown.code, unknown.grpcCode], [400, "INVALID_ARGUMENT", 3]);
  assert.match(unknown.message, /key "sharpness" is unknown/);
  const badEnum = await errorOf(await post("/api/tenant/jobs", request({ mode: "SAMPLING_MODE_SIDEWAYS" })));
  assert.equal(badEnum.code, "INVALID_ARGUMENT");
  const surrogate = await errorOf(await post("/api/tenant/jobs", request({ prompt: "a \ud800 b" })));
  assert.match(surrogate.message, /settings\.prompt is not valid Unicode/);
  // The same rules as gRPC: render-params' and the image decoder's own messages.
  // A non-boolean VAE tiling is refused naming the field, not read as truthy.
  for (const v of ["yes", "false", 1]) {
    const tiling = await errorOf(await post("/api/tenant/jobs", request({ vaeTiling: v })));
    assert.deepEqual([tiling.status, tiling.code], [400, "INVALID_ARGUMENT"]);
    assert.match(tiling.message, /vae_tiling/);
  }
  const steps = await errorOf(await post("/api/tenant/jobs", request({ steps: 500 })));
  assert.match(steps.message, /^steps must be an integer from 1 to 200, got 500$/);
  const image = await errorOf(
    await post("/api/tenant/jobs", { ...request({}), image: { data: Buffer.from("no picture").toString("base64") } }),
  );
  assert.match(image.message, /^image is not a readable image/);
  const plain = await fetch(`${base}/api/tenant/jobs`, {
    method: "POST",
    headers: { ...headers(ACME), "content-type": "text/plain" },
    body: JSON.stringify(request({})),
  });
  assert.equal(plain.status, 415, "a plain cross-site form post is refused");
});

test("jobs are the tenant's own; one submitted again keeps settings and images, with a new seed", async () => {
  const submitted = (await (await post("/api/tenant/jobs", request({ seed: "5", vaeTiling: true }))).json()) as {
    job: JobJson;
  };
  const job = submitted.job;
  assert.equal(job.settings["vaeTiling"], true);
  assert.equal(job.state, "JOB_STATE_QUEUED");
  assert.deepEqual([job.width, job.height], [64, 48], "demo.png's bucket at resolution 64");
  assert.equal((await get(`/api/tenant/jobs/${job.id}`)).status, 200);
  const other = await errorOf(await get(`/api/tenant/jobs/${job.id}`, ZETA));
  assert.deepEqual([other.status, other.code, other.message], [404, "NOT_FOUND", `job ${job.id} does not exist`]);
  assert.equal((await post(`/api/tenant/jobs/${job.id}/cancel`, {}, ZETA)).status, 404);
  assert.equal((await post(`/api/tenant/jobs/${job.id}/resubmit`, {}, ZETA)).status, 404);

  // 48 pixels high is a bucket's size, not one a request may name: the new job asks for resolution 64.
  const again = ((await (await post(`/api/tenant/jobs/${job.id}/resubmit`, { seed: "6" })).json()) as { job: JobJson })
    .job;
  assert.notEqual(again.id, job.id);
  assert.deepEqual({ ...again.settings, seed: "5" }, job.settings);
  assert.equal(again.settings["seed"], "6");
  const typo = await errorOf(await post(`/api/tenant/jobs/${job.id}/resubmit`, { sead: "7" }));
  assert.deepEqual([typo.status, typo.code], [400, "INVALID_ARGUMENT"]);
  const random = ((await (await post(`/api/tenant/jobs/${job.id}/resubmit`, {})).json()) as { job: JobJson }).job;
  assert.notEqual(random.settings["seed"], "5");

  const cancelled = ((await (await post(`/api/tenant/jobs/${again.id}/cancel`, {})).json()) as { job: JobJson }).job;
  assert.equal(cancelled.state, "JOB_STATE_CANCELLED");
  const gone = await errorOf(await post(`/api/tenant/jobs/${again.id}/resubmit`, {}));
  assert.deepEqual([gone.status, gone.code], [409, "FAILED_PRECONDITION"]);
  assert.match(gone.message, /no longer has its input images/);
  await post(`/api/tenant/jobs/${random.id}/cancel`, {});
  await post(`/api/tenant/jobs/${job.id}/cancel`, {});
});

test("a job with keyframes submitted again keeps them, at their times", async () => {
  const withKeyframes = {
    ...request({ seconds: 2, mode: "SAMPLING_MODE_INVERTED_ANTI_DRIFTING" }),
    keyframes: [{ timeSeconds: 1.5, image: { data: png.toString("base64") } }],
  };
  const job = ((await (await post("/api/tenant/jobs", withKeyframes)).json()) as { job: JobJson }).job;
  assert.deepEqual(job.keyframeTimes, [1.5]);
  const again = ((await (await post(`/api/tenant/jobs/${job.id}/resubmit`, {})).json()) as { job: JobJson }).job;
  assert.deepEqual(again.keyframeTimes, [1.5]);
  await post(`/api/tenant/jobs/${again.id}/cancel`, {});
  await post(`/api/tenant/jobs/${job.id}/cancel`, {});
});

/** Reads server-sent events until one of the given type satisfies the test. */
async function nextEvent(
  reader: ReadableStreamDefaultReader<string>,
  state: { buf: string },
  type: string,
  test: (data: unknown) => boolean = () => true,
): Promise<unknown> {
  for (;;) {
    for (let i = state.buf.indexOf("\n\n"); i >= 0; i = state.buf.indexOf("\n\n")) {
      const frame = state.buf.slice(0, i);
      state.buf = state.buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(frame)?.[1];
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (event === type && data !== undefined && test(JSON.parse(data))) return JSON.parse(data);
    }
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended");
    state.buf += value;
  }
}

test("the live feed starts with the tenant's jobs, newest first, and follows only them", async () => {
  const open = async (token: string) => {
    const res = await fetch(`${base}/api/tenant/events`, { headers: headers(token) });
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    return { reader: res.body!.pipeThrough(new TextDecoderStream()).getReader(), state: { buf: "" } };
  };
  const acme = await open(ACME);
  const zeta = await open(ZETA);
  const first = (await nextEvent(acme.reader, acme.state, "jobs")) as { jobs: { id: string; createdAt: string }[] };
  assert.ok(first.jobs.length >= 3);
  const created = first.jobs.map((j) => Date.parse(j.createdAt));
  assert.deepEqual(
    created,
    [...created].sort((a, b) => b - a),
  );
  assert.deepEqual(await nextEvent(zeta.reader, zeta.state, "jobs"), { jobs: [] });

  const job = ((await (await post("/api/tenant/jobs", request({}))).json()) as { job: JobJson }).job;
  await post(`/api/tenant/jobs/${job.id}/cancel`, {});
  const cancelled = (await nextEvent(
    acme.reader,
    acme.state,
    "job",
    (d) => (d as { job: JobJson }).job.id === job.id && (d as { job: JobJson }).job.state === "JOB_STATE_CANCELLED",
  )) as { jobId: string; sequence: string; state?: string };
  assert.equal(cancelled.jobId, job.id);
  assert.match(cancelled.sequence, /^\d+$/);
  // zeta heard nothing of it: a job of its own, submitted after, is the next thing it hears.
  const own = ((await (await post("/api/tenant/jobs", request({}), ZETA)).json()) as { job: JobJson }).job;
  await post(`/api/tenant/jobs/${own.id}/cancel`, {}, ZETA);
  const heard = (await nextEvent(zeta.reader, zeta.state, "job")) as { jobId: string };
  assert.equal(heard.jobId, own.id);
  await acme.reader.cancel();
  await zeta.reader.cancel();
});
