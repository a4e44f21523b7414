/**
 * A node that keeps failing: its failed tasks go to other nodes, it quarantines itself after three
 * failures in a row, and jobs still finish with the healthy nodes. With no healthy node left, a
 * job fails only once its retry budget is spent, with the reason. Real stage workers on the tiny
 * model, in-process bus and local store; the broken node fails through its failpoint.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import type { JobRecord } from "../../coordinator/dispatch/job-record.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import type { SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

let embedded: NodeModels;
let tmp: string;
const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
const request = (seed: bigint): SubmitJobRequest => ({
  image: { source: { $case: "data", value: image } },
  settings: {
    prompt: "a lighthouse",
    length: { $case: "numFrames", value: 40 },
    mode: 0,
    steps: 2,
    resolution: 64,
    seed,
  },
  bundle: "",
  priority: 0,
  idempotencyKey: "",
  keyframes: [],
  loras: [],
});

before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-quarantine-"));
});
after(async () => {
  await embedded.close();
  await rm(tmp, { recursive: true, force: true });
});

async function farm(dir: string, denoiseNodes: { id: string; broken: boolean }[]) {
  const bus = new MemoryBus();
  const store = new LocalObjectStore(path.join(tmp, dir));
  const dispatcher = await Dispatcher.start(bus, store, { maxAttempts: 3 });
  const ctx = { ...embedded, store };
  const quarantined = new Map<string, string>();
  const nodes = [
    await NodeLoop.start(bus, ctx, {
      nodeId: "general",
      stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
    }),
  ];
  for (const n of denoiseNodes) {
    nodes.push(
      await NodeLoop.start(bus, ctx, {
        nodeId: n.id,
        stages: ["denoise"],
        ...(n.broken ? { failStages: ["denoise"] } : {}),
        onQuarantine: (r) => quarantined.set(n.id, r),
      }),
    );
  }
  const service = new JobService({
    bus,
    store,
    dispatcher,
    manifest: embedded.runtime.bundle.manifest,
    bundleName: "tiny",
  });
  const until = async (id: string): Promise<JobRecord> => {
    for (const end = Date.now() + 60_000; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
      const r = await dispatcher.job(id);
      if (r !== null && (r.state === "SUCCEEDED" || r.state === "FAILED")) return r;
    }
    throw new Error(`job ${id} did not end`);
  };
  const stop = async (): Promise<void> => {
    for (const n of nodes) await n.stop();
    await dispatcher.stop();
  };
  return { service, until, quarantined, stop };
}

test("a failing node's tasks go to a healthy node; it is quarantined after 3 failures in a row", async () => {
  const f = await farm("mixed", [
    { id: "broken", broken: true },
    { id: "healthy", broken: false },
  ]);
  try {
    const jobs = [];
    for (let i = 0; i < 3; i++) jobs.push((await f.service.submit(request(BigInt(i)))).job.id);
    const records = await Promise.all(jobs.map((id) => f.until(id)));
    for (const r of records) assert.equal(r.state, "SUCCEEDED", r.error);
    const log = records.flatMap((r) => r.taskLog ?? []).filter((e) => e.taskId.includes(".denoise."));
    const failures = log.filter((e) => !e.ok);
    assert.ok(
      failures.length >= 1 && failures.every((e) => e.node === "broken"),
      `failures: ${JSON.stringify(failures.map((e) => e.node))}`,
    );
    assert.ok(
      log.filter((e) => e.ok).every((e) => e.node === "healthy"),
      "every denoise succeeded on the healthy node",
    );
    // Each failed task was then done by the healthy node, not retried on the broken one.
    for (const e of failures) assert.ok(log.some((x) => x.taskId === e.taskId && x.ok && x.node === "healthy"));
    // The broken node is offered work until its third failure in a row, then takes no more.
    assert.equal(failures.length, 3);
    assert.match(f.quarantined.get("broken") ?? "", /3 tasks failed in a row; last: failpoint/);
  } finally {
    await f.stop();
  }
});

test("with only failing nodes a job fails after its retry budget, saying why", async () => {
  const f = await farm("all-broken", [{ id: "broken", broken: true }]);
  try {
    const { job } = await f.service.submit(request(7n));
    const r = await f.until(job.id);
    assert.equal(r.state, "FAILED");
    assert.equal(r.errorStatus, "INTERNAL");
    assert.match(
      r.error ?? "",
      /denoise\.0 failed 3 times; last on broken: failpoint: this node fails every denoise task/,
    );
    assert.match(f.quarantined.get("broken") ?? "", /3 tasks failed in a row/);
  } finally {
    await f.stop();
  }
});
