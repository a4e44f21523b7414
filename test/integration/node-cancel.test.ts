/**
 * A node hears a cancellation on the job's event subject and stops the task in hand between two
 * denoising steps, on both buses. (Nodes never read the job record: test/unit/layers.test.ts.)
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { STAGE_KINDS, isStepEvent, jobEventSubject, jobEvents, type StepEvent } from "../../shared/farm/protocol.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";
import { forEachBus } from "../support/buses.js";
import { until } from "../support/wait.js";

let models: NodeModels;
let dir: string;
let image: Buffer;

before(async () => {
  models = await openNodeModels(tinyBundleDir(), "cpu");
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-cancel-"));
  image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
});
after(async () => {
  await models.close();
  await rm(dir, { recursive: true, force: true });
});

forEachBus(
  (kind) => `cancellation on the ${kind} bus`,
  (kind, bus) => {
    test("a running denoise task stops within a few steps of its job's cancellation", async () => {
      const store = new LocalObjectStore(path.join(dir, kind.replace(/\W/g, "-")));
      const dispatcher = await Dispatcher.start(bus(), store);
      const node = await NodeLoop.start(bus(), { ...models, store }, { nodeId: "n", stages: STAGE_KINDS });
      const service = new JobService({
        bus: bus(),
        store,
        dispatcher,
        manifest: models.runtime.bundle.manifest,
        bundleName: "tiny",
      });
      try {
        const steps = 200;
        const { job } = await service.submit({
          image: { source: { $case: "data", value: image } },
          settings: {
            prompt: "a lighthouse",
            length: { $case: "numFrames", value: 20 },
            mode: 0,
            steps,
            resolution: 64,
          },
          bundle: "",
          priority: 0,
          idempotencyKey: "",
          keyframes: [],
          loras: [],
        });
        const seen: StepEvent[] = [];
        const off = bus().events.subscribe(jobEventSubject(job.id), (_s, data) => {
          const e = jobEvents.decode(data);
          if (isStepEvent(e)) seen.push(e);
        });
        await until("the first denoise step", async () => seen.length > 0, 60_000);
        assert.notEqual(await dispatcher.cancel(job.id), null);
        const atCancel = seen.length;
        // The node stops: no step arrives for a while, long before the section's last step.
        await until(
          "the steps to stop",
          async () => {
            const before = seen.length;
            await new Promise((r) => setTimeout(r, 500));
            return seen.length === before;
          },
          10_000,
        );
        off();
        const last = seen.at(-1)!;
        assert.ok(
          last.step < steps,
          `the section ran to its end (step ${last.step} of ${steps}, ${atCancel} steps before the cancel)`,
        );
        assert.equal((await dispatcher.job(job.id))?.state, "CANCELLED");
      } finally {
        await node.stop();
        await dispatcher.stop();
      }
    });
  },
);
