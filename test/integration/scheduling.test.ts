/**
 * What runs next when jobs compete for nodes: the dispatcher's scheduling (priority, then tenants
 * in turn, then job age), priority changes, retries of failed jobs and attempt budgets, on both buses (in-process,
 * and a real nats-server). The "node" here is a plain consumer of the denoise queue that reports
 * results as a node does, so the order of work is exactly observable.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import type { Bus, Consumer } from "../../shared/bus/bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { FarmError } from "../../shared/errors.js";
import { sleep, until } from "../support/wait.js";
import { forEachBus } from "../support/buses.js";
import { RESULTS_QUEUE, type TaskMessage, type TaskResult, type StageTask } from "../../shared/farm/protocol.js";

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const dec = <T>(b: Uint8Array): T => JSON.parse(new TextDecoder().decode(b)) as T;

const params = validateRenderParams(
  { prompt: "p", numFrames: 9 },
  { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
);

/** A job of `n` denoise sections in a chain (the shape that makes scheduling matter). */
function chain(jobId: string, n: number, tenant?: string): { spec: ReturnType<typeof toJobSpec>; tasks: StageTask[] } {
  const tasks: StageTask[] = Array.from({ length: n }, (_, k) => ({
    id: `${jobId}.denoise.${k}`,
    jobId,
    kind: "denoise",
    section: k,
    dependsOn: k === 0 ? [] : [`${jobId}.denoise.${k - 1}`],
    inputs: {},
    outputs: {},
  }));
  return { spec: toJobSpec(jobId, params, { height: 64, width: 64 }, tenant), tasks };
}

/**
 * One node of concurrency 1 on the denoise queue: runs tasks in the order it gets them. Given the
 * dispatcher, it asks for its next task only once its result is in the job's record (the attempt
 * counted), as a node's result is before the next decision on a farm that keeps up: the order of
 * work then shows the scheduling alone, not how soon a loaded machine got round to a result (the
 * dispatcher waits 200 ms for a result in flight, then decides without it).
 */
class FakeDenoiseNode {
  readonly ran: string[] = [];
  private gate: Promise<void> | null = null;
  private open: () => void = () => undefined;
  private consumer: Consumer | undefined;
  constructor(private readonly fail: (taskId: string, attempt: number) => boolean = () => false) {}

  /** Holds the next task until resume(): lets a test pile up work behind a running task. */
  pause(): void {
    this.gate = new Promise((r) => (this.open = r));
  }
  resume(): void {
    this.gate = null;
    this.open();
  }

  async start(bus: Bus, recordedBy?: Dispatcher): Promise<void> {
    await bus.queues.ensure("denoise");
    this.consumer = await bus.queues.consume(
      "denoise",
      { name: "stage-denoise", ackWaitMs: 10_000, maxDeliver: 5 },
      async (d) => {
        const msg = dec<TaskMessage>(d.data);
        this.ran.push(msg.taskId);
        if (this.gate !== null) await this.gate;
        const runs = this.ran.filter((t) => t === msg.taskId).length;
        const ok = !this.fail(msg.taskId, runs);
        await bus.queues.enqueue(
          RESULTS_QUEUE,
          enc({
            jobId: msg.jobId,
            taskId: msg.taskId,
            ok,
            node: "fake",
            ...(ok ? {} : { error: "boom", errorStatus: "INTERNAL" }),
          } satisfies TaskResult),
        );
        if (recordedBy !== undefined)
          await until(
            `the result of ${msg.taskId} recorded`,
            async () => ((await recordedBy.job(msg.jobId))?.attempts[msg.taskId] ?? 0) >= runs,
          );
        d.ack();
      },
    );
  }

  async stop(): Promise<void> {
    this.resume();
    await this.consumer?.stop();
  }
}

forEachBus(
  (kind) => `scheduling on the ${kind} bus`,
  (kind, bus) => {
    const name = kind.split(" ")[0]!; // job ids: one word
    let tmp: string;
    before(async () => {
      tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-sched-"));
    });
    after(async () => {
      await rm(tmp, { recursive: true, force: true });
    });

    test("a high-priority job overtakes the backlog; equal priorities run oldest first", async () => {
      const d = await Dispatcher.start(bus(), new LocalObjectStore(path.join(tmp, "a")), { tickMs: 50 });
      const node = new FakeDenoiseNode();
      await node.start(bus(), d);
      try {
        node.pause();
        const old = chain(`old-${name}`, 3);
        await d.submit(old.spec, old.tasks);
        await until("the first task running", () => node.ran.length === 1);
        const young = chain(`young-${name}`, 3);
        await d.submit(young.spec, young.tasks);
        await sleep(20); // a later creation time
        const urgent = chain(`urgent-${name}`, 3);
        await d.submit(urgent.spec, urgent.tasks, { priority: 5 });
        assert.equal(d.held("denoise"), 2, "the node is busy: both new jobs' first sections are held");
        node.resume();
        await until("all 9 sections", () => node.ran.length === 9);
        const job = (t: string): string => t.split(".")[0]!;
        assert.deepEqual(node.ran.map(job), [
          old.spec.jobId,
          ...Array(3).fill(urgent.spec.jobId),
          old.spec.jobId,
          old.spec.jobId,
          ...Array(3).fill(young.spec.jobId),
        ]);
        for (const j of [old, young, urgent])
          await until(`${j.spec.jobId} done`, async () => (await d.job(j.spec.jobId))?.state === "SUCCEEDED");
        assert.equal((await d.job(urgent.spec.jobId))!.priority, 5);
      } finally {
        await node.stop();
        await d.stop();
      }
    });

    test("raising a waiting job's priority lets it run next", async () => {
      const d = await Dispatcher.start(bus(), new LocalObjectStore(path.join(tmp, "b")), { tickMs: 50 });
      const node = new FakeDenoiseNode();
      await node.start(bus(), d);
      try {
        node.pause();
        const a = chain(`a-${name}`, 2);
        await d.submit(a.spec, a.tasks);
        await until("a running", () => node.ran.length === 1);
        const b = chain(`b-${name}`, 1);
        const c = chain(`c-${name}`, 1);
        await d.submit(b.spec, b.tasks);
        await d.submit(c.spec, c.tasks);
        assert.equal((await d.setPriority(c.spec.jobId, 100))?.priority, 100);
        await assert.rejects(
          d.setPriority(c.spec.jobId, 1.5),
          (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT",
        );
        node.resume();
        await until("4 sections", () => node.ran.length === 4);
        assert.deepEqual(node.ran, [
          `${a.spec.jobId}.denoise.0`,
          `${c.spec.jobId}.denoise.0`,
          `${a.spec.jobId}.denoise.1`,
          `${b.spec.jobId}.denoise.0`,
        ]);
        await until("b done", async () => (await d.job(b.spec.jobId))?.state === "SUCCEEDED");
        assert.equal(await d.setPriority(b.spec.jobId, 1), null, "an ended job's priority stays");
      } finally {
        await node.stop();
        await d.stop();
      }
    });

    test("tenants of equal priority take turns: one tenant's flood does not hold back another's job", async () => {
      const d = await Dispatcher.start(bus(), new LocalObjectStore(path.join(tmp, "f")), { tickMs: 50 });
      const node = new FakeDenoiseNode();
      await node.start(bus(), d);
      try {
        node.pause();
        const flood = Array.from({ length: 6 }, (_, i) => chain(`flood${i}-${name}`, 2, "flood"));
        for (const j of flood) await d.submit(j.spec, j.tasks);
        await until("the flood's first task running", () => node.ran.length === 1);
        await sleep(20); // created after the whole flood
        const lone = chain(`lone-${name}`, 2, "lone");
        await d.submit(lone.spec, lone.tasks);
        node.resume();
        await until("all 14 sections", () => node.ran.length === 14, 60_000);
        const job = (t: string): string => t.split(".")[0]!;
        // Oldest first alone would run the lone job last (13th and 14th); in turn, it starts at the
        // next free slot and runs every other task.
        assert.equal(job(node.ran[1]!), lone.spec.jobId, node.ran.join(" "));
        assert.equal(job(node.ran[3]!), lone.spec.jobId, node.ran.join(" "));
        // Within the flooding tenant, the oldest job still goes first.
        assert.deepEqual(node.ran.filter((t) => !t.startsWith("lone")).slice(0, 3), [
          `${flood[0]!.spec.jobId}.denoise.0`,
          `${flood[0]!.spec.jobId}.denoise.1`,
          `${flood[1]!.spec.jobId}.denoise.0`,
        ]);
        // The last result's state change may land after its task ran: wait for it, as on a real bus.
        await until("every job finished", () => d.unfinishedJobs("flood") === 0 && d.unfinishedJobs("lone") === 0);
      } finally {
        await node.stop();
        await d.stop();
      }
    });

    test("--max-running-per-tenant: a tenant's tasks in flight stay under its limit; its flood leaves nodes to others", async () => {
      const d = await Dispatcher.start(bus(), new LocalObjectStore(path.join(tmp, "g")), {
        tickMs: 50,
        maxRunningPerTenant: 1,
      });
      const running = new Map<string, number>();
      const peak = new Map<string, number>();
      const ran: string[] = [];
      let gate: Promise<void> | null = new Promise((r) => setTimeout(r, 300));
      // Two nodes on the denoise queue, each running one task at a time.
      const nodes = await Promise.all(
        [0, 1].map(() =>
          bus().queues.consume("denoise", { name: "stage-denoise", ackWaitMs: 10_000, maxDeliver: 5 }, async (m) => {
            const msg = dec<TaskMessage>(m.data);
            const tenant = msg.spec.tenant ?? "default";
            ran.push(msg.taskId);
            running.set(tenant, (running.get(tenant) ?? 0) + 1);
            peak.set(tenant, Math.max(peak.get(tenant) ?? 0, running.get(tenant)!));
            await (gate ?? sleep(20));
            running.set(tenant, running.get(tenant)! - 1);
            const result: TaskResult = { jobId: msg.jobId, taskId: msg.taskId, ok: true, node: "fake" };
            await bus().queues.enqueue(RESULTS_QUEUE, enc(result));
            m.ack();
          }),
        ),
      );
      try {
        const flood = Array.from({ length: 4 }, (_, i) => chain(`rflood${i}-${name}`, 2, "flood"));
        for (const j of flood) await d.submit(j.spec, j.tasks);
        await until("the flood's first task running", () => ran.length === 1);
        await sleep(150); // a second node is idle, yet the flood waits for its one task
        assert.equal(ran.length, 1, "the flooding tenant is at its limit of 1");
        const load = d.tenantLoad().get("flood")!;
        assert.deepEqual([load.queuedJobs, load.runningTasks, load.waitingTasks], [4, 1, 3]);
        const lone = chain(`rlone-${name}`, 2, "lone");
        await d.submit(lone.spec, lone.tasks);
        await until("the lone tenant's task on the idle node", () => ran.length === 2);
        assert.equal(ran[1], `${lone.spec.jobId}.denoise.0`);
        gate = null;
        await until("all 10 sections", () => ran.length === 10, 60_000);
        assert.deepEqual([peak.get("flood"), peak.get("lone")], [1, 1], "never more than 1 task of a tenant at once");
        await until("every job finished", () => d.unfinishedJobs("flood") === 0 && d.unfinishedJobs("lone") === 0);
        assert.equal(d.tenantLoad().size, 0);
      } finally {
        gate = null;
        for (const n of nodes) await n.stop();
        await d.stop();
      }
    });

    test("a task out of attempts fails its job; retry runs it again from the failed section", async () => {
      const d = await Dispatcher.start(bus(), new LocalObjectStore(path.join(tmp, "c")), {
        tickMs: 50,
        maxAttempts: 2,
      });
      let broken = true;
      const node = new FakeDenoiseNode((taskId) => broken && taskId.endsWith(".denoise.1"));
      await node.start(bus());
      try {
        const j = chain(`flaky-${name}`, 3);
        await d.submit(j.spec, j.tasks);
        await until("failed", async () => (await d.job(j.spec.jobId))?.state === "FAILED");
        const failed = (await d.job(j.spec.jobId))!;
        assert.match(failed.error!, /denoise\.1 failed 2 times; last on fake: boom/);
        assert.equal(failed.taskStates[`${j.spec.jobId}.denoise.0`], "done");
        assert.equal(await d.retry(`${j.spec.jobId}`).then((r) => r?.state), "RUNNING");
        await until("failed again", async () => (await d.job(j.spec.jobId))?.state === "FAILED");
        assert.equal(
          node.ran.filter((t) => t.endsWith(".denoise.1")).length,
          4,
          "each retry has a fresh budget of 2 attempts",
        );
        broken = false;
        await d.retry(j.spec.jobId);
        await until("succeeded", async () => (await d.job(j.spec.jobId))?.state === "SUCCEEDED");
        assert.equal(node.ran.filter((t) => t.endsWith(".denoise.0")).length, 1, "finished sections are not run again");
        assert.equal(await d.retry(j.spec.jobId), null, "only a failed job can be retried");
      } finally {
        await node.stop();
        await d.stop();
      }
    });
  },
);
