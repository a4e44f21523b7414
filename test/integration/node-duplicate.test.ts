/**
 * A second copy of a task whose result is in (a queue delivers at least once: after a NATS
 * failover an ack can be lost and the task handed out again) is dropped by the node, not run
 * again, on both buses.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { Dispatcher, taskMessage } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { STAGE_KINDS, taskMessages } from "../../shared/farm/protocol.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { forEachBus } from "../support/buses.js";
import { until } from "../support/wait.js";

let models: NodeModels;
let dir: string;
let image: Buffer;

before(async () => {
  models = await openNodeModels(tinyBundleDir(), "cpu");
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-duplicate-"));
  image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
});
after(async () => {
  await models.close();
  await rm(dir, { recursive: true, force: true });
});

forEachBus(
  (kind) => `second copies of a task on the ${kind} bus`,
  (kind, bus) => {
    test("a copy of a task done already is dropped, not run again", async () => {
      const store = new LocalObjectStore(path.join(dir, kind.replace(/\W/g, "-")));
      const logs: { msg?: string; taskId?: string }[] = [];
      const log = pino({ level: "info" }, { write: (line: string) => void logs.push(JSON.parse(line)) });
      const dispatcher = await Dispatcher.start(bus(), store);
      const node = await NodeLoop.start(bus(), { ...models, store }, { nodeId: "n", stages: STAGE_KINDS, log });
      const service = new JobService({
        bus: bus(),
        store,
        dispatcher,
        manifest: models.runtime.bundle.manifest,
        bundleName: "tiny",
      });
      try {
        // Many steps: the job is still running while the copy is handled.
        const { job } = await service.submit({
          image: { source: { $case: "data", value: image } },
          settings: {
            prompt: "a lighthouse",
            length: { $case: "numFrames", value: 20 },
            mode: 0,
            steps: 200,
            resolution: 64,
          },
          bundle: "",
          priority: 0,
          idempotencyKey: "",
          keyframes: [],
        });
        const textTask = `${job.id}.encode_text`;
        await until(
          "the text encode done",
          async () => (await dispatcher.job(job.id))?.taskStates[textTask] === "done",
        );
        const record = (await dispatcher.job(job.id))!;
        await bus().queues.enqueue("encode_text", taskMessages.encode(taskMessage(record, textTask)));
        const said = (msg: string): number => logs.filter((e) => e.taskId === textTask && e.msg === msg).length;
        await until("the copy dropped", async () => said("task dropped: done already") === 1, 20_000);
        assert.equal(said("task started"), 1);
        assert.equal((await dispatcher.job(job.id))?.state, "RUNNING");
        await dispatcher.cancel(job.id);
      } finally {
        await node.stop();
        await dispatcher.stop();
      }
    });
  },
);
