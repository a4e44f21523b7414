/**
 * A coordinator SIGKILLed while it handles a result leaves that result taken and not acknowledged
 * on the results queue: the next leader gets it only when its ack wait runs out. With the results'
 * ack wait at 30 s the job stood still for 30 s after every such restart (the fault suite's slow
 * and, under load, lost "coordinator SIGKILLed mid-job" runs). Here, on a real nats-server, a
 * plain client takes a result from the dispatcher's durable consumer and disconnects without
 * acknowledging it, as a killed coordinator does; the next leader must record it within a few
 * seconds (DISPATCHER_RESULTS_ACK_WAIT_MS, while a live coordinator keeps a result it is handling
 * in hand with in-progress acks), and the job must complete with every task run once.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { DISPATCHER_RESULTS_ACK_WAIT_MS, Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import type { Consumer } from "../../shared/bus/bus.js";
import { NatsBus, streamOf } from "../../shared/bus/nats-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";
import {
  RESULTS_QUEUE,
  taskMessages,
  taskResults,
  type StageTask,
  type TaskResult,
} from "../../shared/farm/protocol.js";
import { until } from "../support/wait.js";

let dir: string;
let server: LocalServer;
let url: string;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-results-handover-"));
  server = await startNatsServer(path.join(dir, "js"));
  url = `nats://${server.host}:${server.port}`;
});
after(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

const params = validateRenderParams(
  { prompt: "p", numFrames: 9 },
  { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
);

test("a result a dead coordinator took and never acknowledged is recorded by the next leader within seconds", async () => {
  assert.ok(DISPATCHER_RESULTS_ACK_WAIT_MS <= 5000, "no longer than the default lease TTL");
  const store = new LocalObjectStore(path.join(dir, "store"));
  const [busA, busB, busNode] = [
    await NatsBus.connect(url, "coordinator-a"),
    await NatsBus.connect(url, "coordinator-b"),
    await NatsBus.connect(url, "node"),
  ];
  const lease = { ttlMs: 1000 };
  let a: Dispatcher | undefined = await Dispatcher.start(busA, store, { tickMs: 50, lease: { ...lease, holder: "a" } });
  let b: Dispatcher | undefined;
  let node: Consumer | undefined;
  try {
    await until("coordinator a leads", () => a!.leader, 10_000);
    // A node that runs each task once and reports it, holding the first until told.
    const ran: string[] = [];
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    await busNode.queues.ensure("denoise");
    node = await busNode.queues.consume(
      "denoise",
      { name: "stage-denoise", ackWaitMs: 10_000, maxDeliver: 5 },
      async (d) => {
        const msg = taskMessages.decode(d.data);
        ran.push(msg.taskId);
        if (ran.length === 1) await held;
        await busNode.queues.enqueue(
          RESULTS_QUEUE,
          taskResults.encode({ jobId: msg.jobId, taskId: msg.taskId, ok: true, node: "n" } satisfies TaskResult),
        );
        d.ack();
      },
    );
    const jobId = "handover";
    const tasks: StageTask[] = [0, 1].map((k) => ({
      id: `${jobId}.denoise.${k}`,
      jobId,
      kind: "denoise",
      section: k,
      dependsOn: k === 0 ? [] : [`${jobId}.denoise.0`],
      inputs: {},
      outputs: {},
    }));
    await a.submit(toJobSpec(jobId, params, { height: 64, width: 64 }), tasks);
    await until("the first task on the node", () => ran.length === 1, 10_000);
    // Coordinator a goes; its result consumer is left on the server, as a killed process leaves it.
    await a.stop();
    a = undefined;
    release();
    // The killed coordinator's last act: it took the task's result and died before acknowledging it.
    const nc = await connect({ servers: url, name: "dead-coordinator" });
    const consumer = await jetstream(nc).consumers.get(streamOf(RESULTS_QUEUE), "dispatcher");
    let taken: string | undefined;
    for (const end = Date.now() + 10_000; taken === undefined && Date.now() < end;) {
      const batch = await consumer.fetch({ max_messages: 1, expires: 1000 });
      for await (const m of batch) taken = taskResults.decode(m.data).taskId;
    }
    assert.equal(taken, `${jobId}.denoise.0`, "the dead coordinator held the first task's result");
    await nc.close();
    const takenAt = Date.now();

    b = await Dispatcher.start(busB, store, { tickMs: 50, lease: { ...lease, holder: "b" } });
    await until(
      "the held result recorded by the new leader",
      async () => {
        const r = await b!.job(jobId);
        return r?.taskStates[`${jobId}.denoise.0`] === "done";
      },
      20_000,
    );
    const waited = Date.now() - takenAt;
    assert.ok(
      waited < DISPATCHER_RESULTS_ACK_WAIT_MS + 4000,
      `recorded ${waited} ms after the dead coordinator took it (the results' ack wait held it)`,
    );
    await until("the job succeeded", async () => (await b!.job(jobId))?.state === "SUCCEEDED", 20_000);
    assert.deepEqual(ran, [`${jobId}.denoise.0`, `${jobId}.denoise.1`], "every task run once");
  } finally {
    await node?.stop();
    await b?.stop();
    await a?.stop();
    await Promise.all([busA.close(), busB.close(), busNode.close()]);
  }
});
