/**
 * The dashboard's HTTP surface on the in-process bus, over real HTTP: the page and its files (and
 * nothing else), the JSON snapshot and its live stream, operator actions with their error codes,
 * Prometheus metrics, and the single authorization gate.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { planJob } from "../../coordinator/planner/job-plan.js";
import { startDashboard, type Dashboard } from "../../coordinator/dashboard/dashboard.js";
import type { FarmSnapshot } from "../../coordinator/dashboard/farm-view.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { silentLogger } from "../../shared/log/logger.js";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { until } from "../support/wait.js";
import { jobKeys } from "../../shared/farm/keys.js";

const OPS_TOKEN = "ops-token-0123456789abcdef";
const ACME_TOKEN = "acme-token-0123456789abcdef";

let embedded: NodeModels;
let tmp: string;
let dispatcher: Dispatcher;
let dashboard: Dashboard;
let locked: Dashboard;
let node: NodeLoop;
let base: string;
let jobId: string;
let bus: MemoryBus;
let store: LocalObjectStore;
let submitJob: (id: string, withImage: boolean) => Promise<void>;

before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-dashboard-"));
  bus = new MemoryBus();
  store = new LocalObjectStore(tmp);
  dispatcher = await Dispatcher.start(bus, store);
  // A node serving only mux: it registers, and the job below stays queued for the test to act on.
  node = await NodeLoop.start(
    bus,
    { ...embedded, store },
    {
      nodeId: "muxer",
      stages: ["mux"],
      presence: { bundle: "tiny", executionProvider: "cpu", device: "test", version: "0", heartbeatMs: 100 },
    },
  );
  const m = embedded.runtime.bundle.manifest;
  const params = validateRenderParams(
    { prompt: "<b>not markup</b>", numFrames: 33, steps: 2, height: 64, width: 64, samplingType: "vanilla" },
    { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
  );
  submitJob = async (id, withImage) => {
    if (withImage)
      await store.put(
        jobKeys(id).firstImage,
        await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png")),
      );
    const spec = toJobSpec(id, params, { height: 64, width: 64 });
    await dispatcher.submit(
      spec,
      planJob({
        jobId: id,
        seed: params.seed,
        sections: sectionPlanFor(params, m),
        hasEndImage: false,
        trueCfg: usesTrueCfg(params),
        latent: { channels: m.vae.latent_channels, height: 8, width: 8 },
      }),
    );
  };
  jobId = "job-under-test";
  await submitJob(jobId, true);
  dashboard = await startDashboard({ bus, store, dispatcher, host: "127.0.0.1", port: 0, log: silentLogger() });
  const auth = TokenAuth.fromEntries([
    { tenant: "ops", token: OPS_TOKEN },
    { tenant: "acme", token: ACME_TOKEN },
  ]);
  locked = await startDashboard({
    bus,
    store,
    dispatcher,
    host: "127.0.0.1",
    port: 0,
    log: silentLogger(),
    authorize: auth.operatorGate(["ops"]),
  });
  base = `http://127.0.0.1:${dashboard.port}`;
});

after(async () => {
  await dashboard.stop();
  await locked.stop();
  await node.stop();
  await dispatcher.stop();
  await embedded.close();
  await rm(tmp, { recursive: true, force: true });
});

const post = (p: string, body: unknown, contentType = "application/json"): Promise<Response> =>
  fetch(`${base}${p}`, { method: "POST", headers: { "content-type": contentType }, body: JSON.stringify(body) });
const state = async (): Promise<FarmSnapshot> => (await (await fetch(`${base}/api/state`)).json()) as FarmSnapshot;

test("serves the page and its files, and no other path", async () => {
  assert.deepEqual(await (await fetch(`${base}/api/session`)).json(), { authorized: true }, "an open farm");
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type")!, /^text\/html/);
  assert.match(await page.text(), /<script type="module" src="\/static\/app.js">/);
  assert.match((await fetch(`${base}/static/app.js`)).headers.get("content-type")!, /^text\/javascript/);
  for (const p of ["/static/../package.json", "/static/%2e%2e/package.json", "/package.json", "/static/"])
    assert.equal((await fetch(`${base}${p}`)).status, 404, p);
});

test("the snapshot lists nodes, queues and jobs; the event stream starts with one", async () => {
  await until("the node", async () => (await state()).nodes.some((n) => n.id === "muxer" && n.status === "active"));
  const s = await state();
  assert.deepEqual(s.nodes.find((n) => n.id === "muxer")!.stages, ["mux"]);
  assert.deepEqual(
    s.queues.map((q) => q.stage),
    ["encode_text", "encode_image", "vae_encode", "denoise", "decode", "mux"],
  );
  // No node serves encode_text: the dispatcher holds the job's first tasks (nothing is queued).
  assert.equal(s.queues.find((q) => q.stage === "encode_text")!.waiting, 0);
  const job = s.jobs.find((j) => j.id === jobId)!;
  assert.equal(job.state, "QUEUED");
  assert.equal(job.prompt, "<b>not markup</b>");
  assert.equal(job.sectionsTotal, 1);
  assert.deepEqual(job.sections, [{ index: 0, denoise: "pending", decode: "pending" }]);

  const first = await new Promise<string>((resolve, reject) => {
    const req = http.get(`${base}/api/events`, (res) => {
      assert.equal(res.headers["content-type"], "text/event-stream");
      let buf = "";
      res.on("data", (c: Buffer) => {
        buf += c.toString();
        const end = buf.indexOf("\n\n", buf.indexOf("event: snapshot"));
        if (end > 0) {
          req.destroy();
          resolve(buf.slice(0, end));
        }
      });
    });
    req.on("error", reject);
  });
  const data = JSON.parse(
    first
      .split("\n")
      .find((l) => l.startsWith("data: "))!
      .slice(6),
  ) as FarmSnapshot;
  assert.ok(data.jobs.some((j) => j.id === jobId));
});

test("actions answer with the right codes and change the farm", async () => {
  assert.equal((await post(`/api/jobs/${jobId}/cancel`, {}, "text/plain")).status, 415, "a plain form post is refused");
  assert.equal((await fetch(`${base}/api/jobs/${jobId}/cancel`)).status, 405);
  assert.equal((await post("/api/jobs/no-such-job/cancel", {})).status, 404);
  assert.equal((await post(`/api/jobs/${jobId}/priority`, { priority: "high" })).status, 400);
  assert.equal((await post(`/api/nodes/no-such-node/drain`, {})).status, 404);

  const prioritised = await post(`/api/jobs/${jobId}/priority`, { priority: 7 });
  assert.equal(prioritised.status, 200, await prioritised.text());
  assert.equal((await state()).jobs.find((j) => j.id === jobId)!.priority, 7);
  assert.equal(
    (await post(`/api/jobs/${jobId}/priority`, { priority: 100_000 })).status,
    400,
    "out of the dispatcher's range",
  );
  const retried = await post(`/api/jobs/${jobId}/retry`, {});
  assert.equal(retried.status, 409, "only a failed job is retried");

  const cancelled = await post(`/api/jobs/${jobId}/cancel`, {});
  assert.equal(cancelled.status, 200, await cancelled.text());
  assert.equal((await state()).jobs.find((j) => j.id === jobId)!.state, "CANCELLED");
  const again = await post(`/api/jobs/${jobId}/cancel`, {});
  assert.equal(again.status, 409);
  assert.match(((await again.json()) as { error: { message: string } }).error.message, /cannot be cancelled/);

  assert.equal((await post("/api/nodes/muxer/drain", {})).status, 200);
  await until("the drain", async () => (await state()).nodes.find((n) => n.id === "muxer")!.status === "drained");
});

test("a failed job is retried: it runs again with a fresh attempt budget", async () => {
  // Its input image was never stored: the image encoder fails every attempt and the job fails.
  // Never quarantined: the only encoder must take the task again after the retry.
  const encoder = await NodeLoop.start(
    bus,
    { ...embedded, store },
    { nodeId: "encoder", stages: ["encode_image"], quarantineAfter: 0 },
  );
  try {
    await submitJob("job-that-fails", false);
    await until(
      "the failure",
      async () => (await state()).jobs.find((j) => j.id === "job-that-fails")?.state === "FAILED",
    );
    const failed = (await state()).jobs.find((j) => j.id === "job-that-fails")!;
    assert.equal(failed.errorStatus, "NOT_FOUND");
    assert.match(failed.error!, /encode_image failed 3 times; last on encoder/);
    const retried = await post("/api/jobs/job-that-fails/retry", {});
    assert.equal(retried.status, 200, await retried.text());
    const after = (await state()).jobs.find((j) => j.id === "job-that-fails")!;
    assert.equal(after.retries, 1);
    assert.notEqual(after.state, "QUEUED");
    await until(
      "the second failure",
      async () => (await state()).jobs.find((j) => j.id === "job-that-fails")?.state === "FAILED",
    );
  } finally {
    await encoder.stop();
  }
});

test("metrics are Prometheus text about this farm", async () => {
  const res = await fetch(`${base}/metrics`);
  assert.match(res.headers.get("content-type")!, /^text\/plain; version=0.0.4/);
  const text = await res.text();
  assert.match(text, /^framefarm_jobs\{state="CANCELLED"\} 1$/m);
  assert.match(text, /^framefarm_node_up\{node="muxer"\} 1$/m);
  assert.match(text, /^framefarm_queue_depth\{stage="encode_text"\} \d+$/m);
  assert.match(text, /^# TYPE framefarm_stage_duration_seconds histogram$/m);
  assert.match(text, /^framefarm_object_store_bytes_total\{node="muxer",direction="read"\} 0$/m);
  assert.match(text, /^framefarm_jobs\{state="FAILED"\} 1$/m);
  // A dispatcher without a lease always dispatches.
  assert.match(text, /^framefarm_coordinator_leader 1$/m);
  // Six failed attempts of the image encoder (3, then 3 more after the retry).
  assert.match(text, /^framefarm_task_retries_total\{stage="encode_image"\} 6$/m);
  assert.match(text, /^framefarm_stage_duration_seconds_count\{stage="encode_image",outcome="failed"\} 6$/m);
});

test("every request passes the authorization gate (operators' tokens only)", async () => {
  const at = `http://127.0.0.1:${locked.port}`;
  for (const p of ["/api/state", "/api/events", "/metrics", "/nope"])
    assert.equal((await fetch(`${at}${p}`)).status, 401, p);
  // The page's own files hold no farm data: they load, and the page asks for a token.
  assert.equal((await fetch(`${at}/`)).status, 200);
  assert.equal((await fetch(`${at}/static/app.js`)).status, 200);
  assert.deepEqual(await (await fetch(`${at}/api/session`)).json(), { authorized: false });
  assert.deepEqual(
    await (await fetch(`${at}/api/session`, { headers: { authorization: `Bearer ${OPS_TOKEN}` } })).json(),
    { authorized: true },
  );
  assert.equal(
    (
      await fetch(`${at}/api/jobs/${jobId}/cancel`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      })
    ).status,
    401,
  );
  assert.equal(
    (await fetch(`${at}/api/state`, { headers: { authorization: `Bearer ${ACME_TOKEN}` } })).status,
    401,
    "a tenant that is not an operator",
  );
  assert.equal((await fetch(`${at}/api/state`, { headers: { authorization: `Bearer ${OPS_TOKEN}` } })).status, 200);
});
