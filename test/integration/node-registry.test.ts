/**
 * Node registration, heartbeats and drain, on both buses (in-process, and NATS JetStream against
 * a real nats-server): a node's record says what it serves and what it is doing; a drain request
 * lets the task in hand finish and stops the node taking more, and the work it leaves waits for
 * another node; a clean stop and silence both read as gone.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { planJob } from "../../coordinator/planner/job-plan.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import type { Bus } from "../../shared/bus/bus.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import {
  DRAIN_BUCKET,
  NODES_BUCKET,
  NodeState,
  StageKindPb,
  isGone,
  msOf,
  readNodes,
  requestDrain,
  timestampOf,
  type NodeRecord,
} from "../../shared/nodes/node-registry.js";
import { FarmError } from "../../shared/errors.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { sleep, until } from "../support/wait.js";
import { forEachBus } from "../support/buses.js";
import { jobKeys } from "../../shared/farm/keys.js";

let embedded: NodeModels;
let tmp: string;
before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-registry-"));
});
after(async () => {
  await embedded.close();
  await rm(tmp, { recursive: true, force: true });
});

const presence = {
  bundle: "tiny",
  executionProvider: "cpu",
  device: "test cpu",
  version: "0.0.0-test",
  heartbeatMs: 150,
};

forEachBus(
  (kind) => `${kind} bus`,
  (name, bus) => {
    const record = async (id: string): Promise<NodeRecord | undefined> =>
      (await readNodes(await bus().kv(NODES_BUCKET))).find((r) => r.nodeId === id);

    test("a drained node finishes the task in hand, takes no more, and its work waits for another node", async () => {
      const store = new LocalObjectStore(path.join(tmp, name.replace(/\W/g, "")));
      const ctx = { ...embedded, store };
      const dispatcher = await Dispatcher.start(bus(), store);
      const general = await NodeLoop.start(bus(), ctx, {
        nodeId: "general",
        stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
        presence,
      });
      const denoiser = await NodeLoop.start(bus(), ctx, { nodeId: "gpu-1", stages: ["denoise"], presence });
      let spare: NodeLoop | undefined;
      try {
        const r0 = (await record("gpu-1"))!;
        assert.equal(r0.state, NodeState.NODE_STATE_ACTIVE);
        assert.deepEqual(r0.capabilities, {
          stages: [StageKindPb.STAGE_KIND_DENOISE],
          bundle: "tiny",
          executionProvider: "cpu",
          device: "test cpu",
        });
        assert.equal(r0.version, "0.0.0-test");
        assert.equal(r0.heartbeatIntervalMs, 150);
        await until("a later heartbeat", async () => msOf((await record("gpu-1"))!.heartbeatAt) > msOf(r0.heartbeatAt));
        await assert.rejects(
          requestDrain(await bus().kv(NODES_BUCKET), await bus().kv(DRAIN_BUCKET), "no-such-node"),
          (e: unknown) => e instanceof FarmError && e.status === "NOT_FOUND",
        );

        // 6 sections of 40 steps: each denoise takes a good fraction of a second.
        const m = embedded.runtime.bundle.manifest;
        const params = validateRenderParams(
          { prompt: "drain me", numFrames: 6 * 33, steps: 40, height: 64, width: 64, samplingType: "vanilla" },
          { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
        );
        const spec = toJobSpec(`drain-${Date.now()}`, params, { height: 64, width: 64 });
        await store.put(
          jobKeys(spec.jobId).firstImage,
          await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png")),
        );
        const sections = sectionPlanFor(params, m);
        assert.equal(sections.sections.length, 6);
        await dispatcher.submit(
          spec,
          planJob({
            jobId: spec.jobId,
            seed: params.seed,
            sections,
            hasEndImage: false,
            trueCfg: usesTrueCfg(params),
            latent: { channels: m.vae.latent_channels, height: 8, width: 8 },
          }),
        );

        // The heartbeat shows the denoise in hand; drain then.
        const inHand = await until("a denoise in hand", async () =>
          (await record("gpu-1"))?.currentTasks.find((t) => t.stage === StageKindPb.STAGE_KIND_DENOISE),
        );
        assert.equal(inHand.jobId, spec.jobId);
        await requestDrain(await bus().kv(NODES_BUCKET), await bus().kv(DRAIN_BUCKET), "gpu-1");
        await until(
          "draining",
          async () =>
            (await record("gpu-1"))?.state === NodeState.NODE_STATE_DRAINING ||
            (await record("gpu-1"))?.state === NodeState.NODE_STATE_DRAINED,
        );
        await denoiser.drained;
        const drained = (await record("gpu-1"))!;
        assert.equal(drained.state, NodeState.NODE_STATE_DRAINED);
        assert.deepEqual(drained.currentTasks, []);
        // The task in hand was finished and reported, not abandoned.
        const job = await until("the task in hand's result", async () => {
          const j = await dispatcher.job(spec.jobId);
          return j?.taskStates[inHand.taskId] === "done" ? j : undefined;
        });
        assert.ok(Number(drained.sectionsDone) >= 1);
        // Nothing more is taken: the next section waits on its queue.
        await sleep(1000);
        const later = (await dispatcher.job(spec.jobId))!;
        assert.equal(later.state, "RUNNING");
        const denoiseDone = (j: typeof job): number =>
          j.tasks.filter((t) => t.kind === "denoise" && j.taskStates[t.id] === "done").length;
        assert.ok(denoiseDone(later) < 6, "the drained node took no new section");
        // The next section waits, held by the dispatcher while no denoise node asks (or queued).
        const next = later.tasks.find((t) => t.kind === "denoise" && later.taskStates[t.id] !== "done")!;
        assert.ok(
          ["ready", "queued"].includes(later.taskStates[next.id]!),
          `${next.id} is ${later.taskStates[next.id]}`,
        );
        assert.equal((await bus().queues.stats("denoise")).inFlight, 0);
        assert.equal((await record("gpu-1"))!.sectionsDone, drained.sectionsDone);
        assert.ok(!isGone((await record("gpu-1"))!, Date.now()), "a drained node still heartbeats");

        // Another node picks the work up; the job completes.
        spare = await NodeLoop.start(bus(), ctx, { nodeId: "gpu-2", stages: ["denoise"], presence });
        await until("the job to finish", async () => (await dispatcher.job(spec.jobId))?.state === "SUCCEEDED", 60_000);
        await until(
          "gpu-2's sections counted",
          async () => Number((await record("gpu-2"))?.sectionsDone ?? 0) + Number(drained.sectionsDone) === 6,
        );

        // A clean stop says so.
        await denoiser.stop();
        assert.equal((await record("gpu-1"))!.state, NodeState.NODE_STATE_STOPPED);
        assert.ok(isGone((await record("gpu-1"))!, Date.now()));
      } finally {
        await general.stop();
        await denoiser.stop();
        await spare?.stop();
        await dispatcher.stop();
      }
    });
  },
);

async function submitJob(
  bus: Bus,
  store: LocalObjectStore,
  dispatcher: Dispatcher,
  prefix: string,
  sectionCount: number,
  steps: number,
): Promise<string> {
  const m = embedded.runtime.bundle.manifest;
  const params = validateRenderParams(
    { prompt: prefix, numFrames: sectionCount * 33, steps, height: 64, width: 64, samplingType: "vanilla" },
    { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
  );
  const spec = toJobSpec(`${prefix}-${Date.now()}`, params, { height: 64, width: 64 });
  await store.put(
    jobKeys(spec.jobId).firstImage,
    await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png")),
  );
  await dispatcher.submit(
    spec,
    planJob({
      jobId: spec.jobId,
      seed: params.seed,
      sections: sectionPlanFor(params, m),
      hasEndImage: false,
      trueCfg: usesTrueCfg(params),
      latent: { channels: m.vae.latent_channels, height: 8, width: 8 },
    }),
  );
  return spec.jobId;
}

test("a quarantined node says so in the registry, with the reason", async () => {
  const bus = new MemoryBus();
  const store = new LocalObjectStore(path.join(tmp, "quarantine"));
  const dispatcher = await Dispatcher.start(bus, store);
  const broken = await NodeLoop.start(
    bus,
    { ...embedded, store },
    { nodeId: "broken", stages: ["encode_text"], failStages: ["encode_text"], quarantineAfter: 1, presence },
  );
  try {
    await submitJob(bus, store, dispatcher, "quarantine", 1, 2);
    const r = await until("the quarantine", async () => {
      const rec = (await readNodes(await bus.kv(NODES_BUCKET))).find((n) => n.nodeId === "broken");
      return rec?.state === NodeState.NODE_STATE_QUARANTINED ? rec : undefined;
    });
    assert.match(r.stateReason, /1 tasks failed in a row; last: failpoint/);
    assert.equal(Number(r.tasksFailed), 1);
    assert.ok(!isGone(r, Date.now()), "quarantined, not gone: it still heartbeats");
  } finally {
    await broken.stop();
    await dispatcher.stop();
  }
});

test("a node silent for 3 heartbeat intervals is gone", () => {
  const at = Date.now();
  const r = {
    state: NodeState.NODE_STATE_ACTIVE,
    heartbeatIntervalMs: 2000,
    heartbeatAt: timestampOf(at),
  } as NodeRecord;
  assert.ok(!isGone(r, at + 5999));
  assert.ok(isGone(r, at + 6001));
  assert.ok(isGone({ ...r, state: NodeState.NODE_STATE_STOPPED }, at));
});
