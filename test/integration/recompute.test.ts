/**
 * Lost objects are recomputed, not fatal (coordinator/dispatch/recompute.ts), on both buses: a task
 * that reports a corrupt or missing input gets the object's producer run again (a corrupt object
 * removed first, so the producer writes it anew), then runs itself, without spending its attempts; a
 * producer recomputed MAX_RECOMPUTES times fails the job DATA_LOSS naming the object. The "nodes"
 * are plain consumers of the denoise queue that write each task's output and report as nodes do.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { MAX_RECOMPUTES } from "../../coordinator/dispatch/recompute.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import type { Consumer } from "../../shared/bus/bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { until } from "../support/wait.js";
import { forEachBus } from "../support/buses.js";
import { RESULTS_QUEUE, taskMessages, taskResults, type StageTask } from "../../shared/farm/protocol.js";

const params = validateRenderParams(
  { prompt: "p", numFrames: 9 },
  { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
);

/** Sections in a chain, each reading the previous one's history and writing its own. */
function chain(jobId: string, n: number): { spec: ReturnType<typeof toJobSpec>; tasks: StageTask[] } {
  const history = (k: number): string => `jobs/${jobId}/sections/${k}/history.safetensors`;
  const tasks: StageTask[] = Array.from({ length: n }, (_, k) => ({
    id: `${jobId}.denoise.${k}`,
    jobId,
    kind: "denoise",
    section: k,
    dependsOn: k === 0 ? [] : [`${jobId}.denoise.${k - 1}`],
    inputs: k === 0 ? ({} as Record<string, string>) : { history: history(k - 1) },
    outputs: { history: history(k) },
  }));
  return { spec: toJobSpec(jobId, params, { height: 64, width: 64 }, "acme"), tasks };
}

forEachBus(
  (kind) => `recomputing lost objects on the ${kind} bus`,
  (kind, bus) => {
    const name = kind.split(" ")[0]!;
    let tmp: string;
    before(async () => {
      tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-recompute-"));
    });
    after(async () => {
      await rm(tmp, { recursive: true, force: true });
    });

    /**
     * A node that writes each task's output and reports; `corrupt(taskId, run)` says whether this run
     * finds its input corrupt (it then reports DATA_LOSS naming it, as a node's checksum does) or,
     * with `status` NOT_FOUND, missing (as a node's read of a key the store does not have).
     */
    async function node(
      store: LocalObjectStore,
      corrupt: (taskId: string, run: number) => Promise<boolean>,
      status: "DATA_LOSS" | "NOT_FOUND" = "DATA_LOSS",
    ) {
      const ran: string[] = [];
      /** Per run, whether its output was already stored when it went to write it. */
      const outputThere: boolean[] = [];
      const consumer: Consumer = await bus().queues.consume(
        "denoise",
        { name: "stage-denoise", ackWaitMs: 10_000, maxDeliver: 20 },
        async (m) => {
          const { task, jobId, taskId } = taskMessages.decode(m.data);
          ran.push(taskId);
          const input = task.inputs["history"];
          const lost = input !== undefined && (await corrupt(taskId, ran.filter((t) => t === taskId).length));
          outputThere.push((await store.head(task.outputs["history"]!)) !== null);
          if (!lost) await store.putIfAbsent(task.outputs["history"]!, new TextEncoder().encode(taskId));
          await bus().queues.enqueue(
            RESULTS_QUEUE,
            taskResults.encode(
              lost
                ? {
                    jobId,
                    taskId,
                    ok: false,
                    node: "n0",
                    error: status === "DATA_LOSS" ? `object ${input} is corrupt` : `object ${input} does not exist`,
                    errorStatus: status,
                    lostInput: input,
                    startedAt: new Date().toISOString(),
                    finishedAt: new Date().toISOString(),
                  }
                : { jobId, taskId, ok: true, node: "n0" },
            ),
          );
          m.ack();
        },
      );
      return { ran, outputThere, stop: () => consumer.stop() };
    }

    test("a corrupt history is recomputed from its section's inputs, then the section that found it runs; no attempt spent", async () => {
      const store = new LocalObjectStore(path.join(tmp, "a"));
      // One attempt per task: a lost input must not spend it.
      const d = await Dispatcher.start(bus(), store, { tickMs: 50, maxAttempts: 1 });
      const j = chain(`lost-${name}`, 3);
      const history1 = j.tasks[1]!.outputs["history"]!;
      const n = await node(store, async (taskId, run) => {
        if (taskId !== j.tasks[2]!.id || run !== 1) return false;
        // The stored bytes go bad: the dispatcher must remove them before section 1 writes again.
        await store.put(history1, new TextEncoder().encode("flipped"));
        return true;
      });
      try {
        await d.submit(j.spec, j.tasks);
        await until("succeeded", async () => (await d.job(j.spec.jobId))?.state === "SUCCEEDED", 30_000);
        const id = (k: number): string => j.tasks[k]!.id;
        assert.deepEqual(n.ran, [id(0), id(1), id(2), id(1), id(2)]);
        // The corrupt object was gone when section 1 ran again, so its write replaced it. (A job that
        // succeeded keeps no intermediates, so the object itself is not there to read any more.)
        assert.deepEqual(n.outputThere, [false, false, false, false, false]);
        const r = (await d.job(j.spec.jobId))!;
        assert.deepEqual(r.recomputes, { [id(1)]: 1 });
        assert.deepEqual(r.inputLosses, { [id(2)]: 1 });
        assert.equal(r.taskLog?.find((e) => !e.ok)?.lostInput, history1);
      } finally {
        await n.stop();
        await d.stop();
      }
    });

    test("a missing history (deleted from the store) is recomputed the same way; no attempt spent", async () => {
      const store = new LocalObjectStore(path.join(tmp, "m"));
      const d = await Dispatcher.start(bus(), store, { tickMs: 50, maxAttempts: 1 });
      const j = chain(`gone-${name}`, 3);
      const history1 = j.tasks[1]!.outputs["history"]!;
      const n = await node(
        store,
        async (taskId, run) => {
          if (taskId !== j.tasks[2]!.id || run !== 1) return false;
          await store.delete(history1);
          return true;
        },
        "NOT_FOUND",
      );
      try {
        await d.submit(j.spec, j.tasks);
        await until("succeeded", async () => (await d.job(j.spec.jobId))?.state === "SUCCEEDED", 30_000);
        const id = (k: number): string => j.tasks[k]!.id;
        assert.deepEqual(n.ran, [id(0), id(1), id(2), id(1), id(2)]);
        const r = (await d.job(j.spec.jobId))!;
        assert.deepEqual(r.recomputes, { [id(1)]: 1 });
        assert.deepEqual(r.inputLosses, { [id(2)]: 1 });
        assert.equal(r.taskLog?.find((e) => !e.ok)?.lostInput, history1);
      } finally {
        await n.stop();
        await d.stop();
      }
    });

    test(`an object lost again after ${MAX_RECOMPUTES} recomputations fails the job DATA_LOSS naming it`, async () => {
      const store = new LocalObjectStore(path.join(tmp, "b"));
      const d = await Dispatcher.start(bus(), store, { tickMs: 50 });
      const j = chain(`always-${name}`, 2);
      const n = await node(store, (taskId) => Promise.resolve(taskId === j.tasks[1]!.id));
      try {
        await d.submit(j.spec, j.tasks);
        await until("failed", async () => (await d.job(j.spec.jobId))?.state === "FAILED", 30_000);
        const r = (await d.job(j.spec.jobId))!;
        assert.equal(r.errorStatus, "DATA_LOSS");
        assert.match(
          r.error!,
          new RegExp(`object ${j.tasks[0]!.outputs["history"]} was lost again after 3 recomputations`),
        );
        assert.equal(n.ran.filter((t) => t === j.tasks[0]!.id).length, 1 + MAX_RECOMPUTES);
      } finally {
        await n.stop();
        await d.stop();
      }
    });
  },
);
