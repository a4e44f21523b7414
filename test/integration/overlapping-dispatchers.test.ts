/**
 * The worst overlap of two leaders: two dispatchers on one real nats-server, both dispatching the
 * whole time (no lease), the second resuming the first's jobs mid-way. Tasks are marked queued by
 * a revision-checked write before they are sent, under one dedup id per attempt, so every task is
 * still stored on its queue once and the jobs give the embedded frames.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { loadReferenceCase } from "../../coordinator/cli/parity/reference-case.js";
import { pixelsFor, readImageFile } from "../../coordinator/cli/embedded/inputs.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { planJob } from "../../coordinator/planner/job-plan.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { NatsBus, TASK_MAX_AGE_MS, streamOf } from "../../shared/bus/nats-bus.js";
import { DEDUP_WINDOW_MS } from "../../shared/bus/bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { STAGE_KINDS } from "../../shared/farm/protocol.js";
import { storedVideoFrames } from "../support/video.js";
import { until } from "../support/wait.js";
import { casesDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";
import { jobKeys } from "../../shared/farm/keys.js";

let embedded: NodeModels;
let tmp: string;
let nats: LocalServer;

before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-overlap-"));
  nats = await startNatsServer(path.join(tmp, "nats"));
});
after(async () => {
  await embedded.close();
  await nats.stop();
  await rm(tmp, { recursive: true, force: true });
});

async function storedTaskMessages(url: string): Promise<number> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    let n = 0;
    for (const q of STAGE_KINDS) n += (await jsm.streams.info(streamOf(q))).state.last_seq;
    return n;
  } finally {
    await nc.close();
  }
}

test("two dispatchers at once: every task queued once, jobs give the embedded frames", async () => {
  const url = `nats://${nats.host}:${nats.port}`;
  const [busA, busB] = [await NatsBus.connect(url, "coordinator-a"), await NatsBus.connect(url, "coordinator-b")];
  const store = new LocalObjectStore(path.join(tmp, "store"));
  const ctx = { ...embedded, store };
  const a = await Dispatcher.start(busA, store, { tickMs: 50 });
  let b: Dispatcher | undefined;
  const nodeA = await NodeLoop.start(busA, ctx, {
    nodeId: "node-a",
    stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
  });
  const nodeB = await NodeLoop.start(busB, ctx, { nodeId: "node-b", stages: ["denoise"] });
  try {
    const m = embedded.runtime.bundle.manifest;
    const refCase = await loadReferenceCase(path.join(casesDir(), "inverted_3sec.json"));
    const params = validateRenderParams(
      { ...refCase.params, lossless: true },
      { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
    );
    const size = "height" in params.size ? params.size : { height: 0, width: 0 };
    const first = await pixelsFor(await readImageFile(refCase.firstImage!, "image"), size);
    const expected = Buffer.from((await renderJob(embedded, { params, firstPixels: first, lastPixels: null })).data);
    const before = await storedTaskMessages(url);
    const jobs = [];
    let tasksTotal = 0;
    for (let i = 0; i < 3; i++) {
      const spec = toJobSpec(`overlap${i}-${Date.now()}`, params, size);
      await store.put(jobKeys(spec.jobId).firstImage, await readFile(refCase.firstImage!));
      const tasks = planJob({
        jobId: spec.jobId,
        seed: params.seed,
        sections: sectionPlanFor(params, m),
        hasEndImage: false,
        trueCfg: usesTrueCfg(params),
        latent: { channels: m.vae.latent_channels, height: size.height / 8, width: size.width / 8 },
      });
      tasksTotal += tasks.length;
      await a.submit(spec, tasks);
      jobs.push(spec);
      // The second starts once the first has begun: it resumes every job, queued tasks and all.
      if (i === 0) b = await Dispatcher.start(busB, store, { tickMs: 50 });
    }
    for (const spec of jobs) {
      const r = await until(
        `${spec.jobId} ended`,
        async () => {
          const j = await a.job(spec.jobId);
          return j !== null && (j.state === "SUCCEEDED" || j.state === "FAILED") ? j : null;
        },
        120_000,
        50,
      );
      assert.equal(r.state, "SUCCEEDED", r.error);
      const frames = await storedVideoFrames(store, jobKeys(spec.jobId).video, spec.width, spec.height);
      assert.ok(Buffer.from(frames.data).equals(expected), `${spec.jobId}: frames differ from the embedded render`);
    }
    assert.equal((await storedTaskMessages(url)) - before, tasksTotal, "task messages stored for the jobs' tasks");
  } finally {
    await nodeA.stop();
    await nodeB.stop();
    await a.stop();
    await b?.stop();
    await busA.close();
    await busB.close();
  }
});

test("queues remember dedup ids for an hour and drop leftovers after a day; older streams are raised to both", async () => {
  const url = `nats://${nats.host}:${nats.port}`;
  const nc = await connect({ servers: url });
  const bus = await NatsBus.connect(url);
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: streamOf("old_queue"), subjects: ["ff.q.old_queue"], duplicate_window: 120e9 });
    await bus.queues.ensure("old_queue");
    await bus.queues.ensure("new_queue");
    for (const q of ["old_queue", "new_queue"]) {
      const config = (await jsm.streams.info(streamOf(q))).config;
      assert.equal(config.duplicate_window, DEDUP_WINDOW_MS * 1e6, q);
      assert.equal(config.max_age, TASK_MAX_AGE_MS * 1e6, q);
    }
  } finally {
    await bus.close();
    await nc.close();
  }
});
