/**
 * A job's trace outlives the coordinator and the node that started its work: on a real nats-server
 * a task fails on a broken node and is retried on another, and the dispatching coordinator stops
 * mid-job and a second one (under the leader lease) resumes it; every span of the job still lands
 * in its one trace, under its SubmitJob span. Spans are read back in this process (one provider
 * for the two dispatchers and the nodes here, as in `cluster --coordinators 2`).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-node";
import { SpanStatusCode } from "@opentelemetry/api";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { startTracing, type Tracing } from "../../shared/telemetry/tracing.js";
import type { SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { until } from "../support/wait.js";

let models: NodeModels;
let tmp: string;
let nats: LocalServer;
let bus: NatsBus;
let tracing: Tracing;
const exporter = new InMemorySpanExporter();
/** What the test started, stopped last first in after() whether or not it passed. */
const started: (() => Promise<unknown>)[] = [];

before(async () => {
  tracing = await startTracing("framefarm-test", null, { exporter });
  models = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-trace-handover-"));
  nats = await startNatsServer(path.join(tmp, "nats"));
  bus = await NatsBus.connect(`nats://${nats.host}:${nats.port}`, "trace-handover");
});
after(async () => {
  for (const stop of started.reverse()) await stop();
  await bus?.close();
  await nats?.stop();
  await models?.close();
  await tracing?.shutdown();
  await rm(tmp, { recursive: true, force: true });
});

const str = (s: ReadableSpan, key: string): string | undefined => {
  const v = s.attributes[key];
  return typeof v === "string" ? v : undefined;
};

test("a retried task and a job resumed by another coordinator stay in the job's one trace", async () => {
  const store = new LocalObjectStore(path.join(tmp, "store"));
  const lease = (holder: string) => ({ lease: { holder, ttlMs: 2000 } });
  const first = await Dispatcher.start(bus, store, lease("coordinator-a"));
  started.push(() => first.stop());
  const service = new JobService({
    bus,
    store,
    dispatcher: first,
    manifest: models.runtime.bundle.manifest,
    bundleName: "tiny-bundle",
  });
  const ctx = { ...models, store };
  // The only node at first, and its encode_image fails: the task goes back for another attempt.
  const broken = await NodeLoop.start(bus, ctx, {
    nodeId: "broken",
    stages: ["encode_text", "encode_image", "vae_encode"],
    failStages: ["encode_image"],
    quarantineAfter: 0,
  });
  started.push(() => broken.stop());
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  const req: SubmitJobRequest = {
    image: { source: { $case: "data", value: image } },
    keyframes: [],
    settings: { prompt: "a lighthouse", length: { $case: "numFrames", value: 40 }, mode: 0, steps: 2, resolution: 64 },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
  };
  const { job } = await service.submit(req);
  const failed = await until(
    "encode_image failed on the broken node",
    async () => (await first.job(job.id))?.taskLog?.find((e) => !e.ok),
    60_000,
  );
  assert.equal(failed.node, "broken");
  await broken.drain(); // so the retry runs on the healthy node

  // The coordinator goes; another takes the lease and resumes the job from its record.
  await first.stop();
  const second = await Dispatcher.start(bus, store, lease("coordinator-b"));
  started.push(() => second.stop());
  assert.ok(second.leader);
  const healthy = await NodeLoop.start(bus, ctx, {
    nodeId: "healthy",
    stages: ["encode_text", "encode_image", "vae_encode", "denoise", "decode", "mux"],
  });
  started.push(() => healthy.stop());
  const done = await until(
    "the job finished",
    async () => {
      const r = await second.job(job.id);
      return r !== null && (r.state === "SUCCEEDED" || r.state === "FAILED") ? r : undefined;
    },
    120_000,
    100,
  );
  assert.equal(done.state, "SUCCEEDED", done.error);

  const spans = exporter.getFinishedSpans();
  const mine = spans.filter((s) => str(s, "framefarm.job.id") === job.id);
  const traceIds = new Set(mine.map((s) => s.spanContext().traceId));
  assert.equal(traceIds.size, 1, "one trace for the job");
  const trace = spans.filter((s) => traceIds.has(s.spanContext().traceId));
  const byId = new Map(trace.map((s) => [s.spanContext().spanId, s]));
  const roots = trace.filter((s) => !byId.has(s.parentSpanContext?.spanId ?? ""));
  assert.deepEqual(
    roots.map((s) => s.name),
    ["framefarm.v1.JobService/SubmitJob"],
  );
  const root = roots[0]!;

  // The failed attempt: an error span on the broken node; the retry: attempt 2, run on the healthy node.
  const imageTask = done.tasks.find((t) => t.kind === "encode_image")!;
  const runs = trace.filter((s) => s.name === "task encode_image");
  const bad = runs.find((s) => str(s, "framefarm.node.id") === "broken")!;
  assert.equal(bad.status.code, SpanStatusCode.ERROR);
  assert.equal(str(bad, "framefarm.task.outcome"), "failed");
  const good = runs.find((s) => str(s, "framefarm.task.outcome") === "done")!;
  assert.equal(str(good, "framefarm.node.id"), "healthy");
  const retry = byId.get(good.parentSpanContext!.spanId)!;
  assert.equal(retry.name, "dispatch encode_image");
  assert.equal(str(retry, "framefarm.task.id"), imageTask.id);
  assert.ok((retry.attributes["framefarm.attempt"] as number) >= 2, "the retry is a later attempt");

  // Every task, dispatched by either coordinator, hangs from the same SubmitJob.
  for (const t of done.tasks) {
    const dispatches = trace.filter((s) => s.name === `dispatch ${t.kind}` && str(s, "framefarm.task.id") === t.id);
    assert.ok(dispatches.length > 0, `${t.id} dispatched in the job's trace`);
    for (const d of dispatches) assert.equal(d.parentSpanContext?.spanId, root.spanContext().spanId);
    assert.ok(
      trace.some((s) => str(s, "framefarm.task.id") === t.id && str(s, "framefarm.task.outcome") === "done"),
      `${t.id} ran in the job's trace`,
    );
  }
});
