/**
 * A GPU node's work loop: consumes the work queues of the stages it serves, runs each task, sends
 * in-progress acks while it works (so a long denoise is not redelivered), reports the result on
 * the results queue and only then acks. A node that dies mid-task never acks: the queue
 * redelivers the task to another node after the ack wait. A node that fails task after task stops
 * taking work (quarantine). With a presence, the node registers and heartbeats
 * (gpu-node/worker/node-presence.ts) and drains when an operator asks.
 */
import { randomUUID } from "node:crypto";
import type { Bus, Consumer, Delivery, KeyValue } from "../../shared/bus/bus.js";
import { FarmError, LostObjectError } from "../../shared/errors.js";
import { errorMessage, within } from "../../shared/shutdown.js";
import { admitJob } from "../runtime/memory-admission.js";
import {
  JOBS_BUCKET,
  RESULTS_QUEUE,
  decodeJobEvent,
  jobStateSubject,
  jobStepSubject,
  jobEvents,
  readJobState,
  stageConsumerName,
  stageToPb,
  taskMessages,
  taskResults,
  type JobState,
  type StageKind,
  type TaskResult,
} from "../../shared/farm/protocol.js";
import { NodeState, timestampOf } from "../../shared/nodes/node-registry.js";
import { silentLogger, type Logger } from "../../shared/log/logger.js";
import type { CurrentTask, GpuStats } from "../../proto/gen/framefarm/v1/node.js";
import { runStageTask } from "../handlers/index.js";
import type { WorkerContext } from "../handlers/task-io.js";
import { NodePresence } from "./node-presence.js";
import { taskTraffic } from "./task-traffic.js";
import { SpanKind } from "@opentelemetry/api";
import { TRACE_ATTRS, contextOf, inSpan, recordFailure, spanCarrier, tracer } from "../../shared/telemetry/tracing.js";

export interface NodeOptions {
  nodeId: string;
  stages: readonly StageKind[];
  /** Redelivery after this long without an ack or an in-progress signal. */
  ackWaitMs?: number;
  maxDeliver?: number;
  /** After this many failed tasks in a row the node takes no more work (0: never). Default 3. */
  quarantineAfter?: number;
  onQuarantine?(reason: string): void;
  /**
   * Decode tasks this node runs at once (default 1). Decodes of one job are independent of each
   * other, and each spends a good part of its time on the host (tile blend, storing, preview): on a
   * GPU node a second decode keeps the GPU busy meanwhile (decodeConcurrencyFor).
   */
  decodeConcurrency?: number;
  /** Stages whose tasks this node fails on purpose: fault injection for tests and drills. */
  failStages?: readonly StageKind[];
  /** Register in the node registry and heartbeat (what the registry shows besides id and stages). */
  presence?: {
    bundle: string;
    executionProvider: string;
    device: string;
    version: string;
    heartbeatMs?: number;
    /** Object-store bytes this node moved so far. */
    traffic?: () => { read: number; written: number };
    /** The node's GPUs as last sampled (CUDA nodes with nvidia-smi only). */
    gpus?: () => GpuStats[];
  };
  log?: Logger;
}

/**
 * A CUDA node decodes two sections at once. A CPU node one: its cores are the bottleneck, and its
 * memory (a 640x640 section decode holds ~1 GB). WebGPU one: its VAE already runs near the device's
 * memory limit.
 */
export function decodeConcurrencyFor(ep: string, env: NodeJS.ProcessEnv = process.env): number {
  const v = env["FRAMEFARM_DECODE_CONCURRENCY"];
  if (v === undefined || v === "") return ep === "cuda" ? 2 : 1;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 8)
    throw new RangeError(`FRAMEFARM_DECODE_CONCURRENCY must be an integer from 1 to 8, got ${JSON.stringify(v)}`);
  return n;
}

/** Times a node passes a task it already failed on to other nodes before it runs it anyway (it may be the only one). */
const PASS_ON = 3;

export class NodeLoop {
  private consumers: Consumer[] = [];
  private failuresInARow = 0;
  /** Why the node stopped taking work, once quarantined. */
  quarantined: string | null = null;
  private presence: NodePresence | undefined;
  private stopping: Promise<void> | undefined;
  private readonly inHand = new Map<string, CurrentTask>();
  /** Aborts the tasks in hand when a stop's grace runs out: they are handed back, not failed. */
  private readonly shutdown = new AbortController();
  private readonly counts = { tasksDone: 0, tasksFailed: 0, sectionsDone: 0 };
  /** Resolves once a drain has stopped every consumer. */
  readonly drained: Promise<void>;
  private markDrained!: () => void;

  private constructor(
    private readonly bus: Bus,
    private readonly ctx: WorkerContext,
    private readonly options: NodeOptions,
    private readonly log: Logger,
  ) {
    this.drained = new Promise((r) => (this.markDrained = r));
  }

  /** A node that fails task after task is likely broken (driver, memory, disk): it stops taking work. */
  private countFailure(message: string): void {
    const limit = this.options.quarantineAfter ?? 3;
    if (++this.failuresInARow < limit || limit === 0 || this.quarantined !== null) return;
    const reason = `${this.failuresInARow} tasks failed in a row; last: ${message}`;
    this.quarantined = reason;
    this.log.warn({ reason }, "quarantined: taking no more tasks");
    this.options.onQuarantine?.(reason);
    // Not awaited: the task in hand (this one) finishes first.
    void Promise.all(this.consumers.map((c) => c.stop())).then(() =>
      this.presence?.setState(NodeState.NODE_STATE_QUARANTINED, reason),
    );
  }

  static async start(bus: Bus, ctx: WorkerContext, options: NodeOptions): Promise<NodeLoop> {
    const loop = new NodeLoop(bus, ctx, options, (options.log ?? silentLogger()).child({ nodeId: options.nodeId }));
    const kv = await bus.kv(JOBS_BUCKET);
    for (const stage of options.stages) {
      await bus.queues.ensure(stage);
      loop.consumers.push(await loop.consume(kv, stage));
    }
    const p = options.presence;
    if (p !== undefined) {
      loop.presence = await NodePresence.start(
        bus,
        {
          nodeId: options.nodeId,
          version: p.version,
          capabilities: {
            stages: options.stages.map(stageToPb),
            bundle: p.bundle,
            executionProvider: p.executionProvider,
            device: p.device,
          },
        },
        {
          currentTasks: () => [...loop.inHand.values()],
          counters: () => {
            const t = p.traffic?.() ?? { read: 0, written: 0 };
            return { ...loop.counts, bytesRead: t.read, bytesWritten: t.written };
          },
          ...(p.gpus !== undefined ? { gpus: p.gpus } : {}),
        },
        {
          ...(p.heartbeatMs !== undefined ? { intervalMs: p.heartbeatMs } : {}),
          onDrain: () => void loop.drain(),
          onError: (err) => loop.log.warn({ err }, "heartbeat failed"),
        },
      );
    }
    loop.log.info({ stages: options.stages }, "node serving");
    return loop;
  }

  private async consume(kv: KeyValue, stage: StageKind): Promise<Consumer> {
    const { bus, ctx, options } = this;
    const ackWaitMs = options.ackWaitMs ?? 30_000;
    return bus.queues.consume(
      stage,
      {
        name: stageConsumerName(stage),
        ackWaitMs,
        maxDeliver: options.maxDeliver ?? 10,
        ...(stage === "decode" && (options.decodeConcurrency ?? 1) > 1
          ? { concurrency: options.decodeConcurrency }
          : {}),
      },
      async (m) => {
        const msg = taskMessages.decode(m.data);
        if (msg.avoidNodes?.includes(options.nodeId) === true && m.attempt <= PASS_ON) {
          m.nak(200); // this node failed it before: let another node take it
          return;
        }
        const { task, spec } = msg;
        const startedAt = new Date().toISOString();
        const modelBefore = ctx.runtime.clock.ms;
        const phases: Record<string, number> = {};
        // The task's span: a child of the dispatch span whose context the message carries.
        const span = tracer().startSpan(
          `task ${stage}`,
          {
            kind: SpanKind.CONSUMER,
            attributes: {
              [TRACE_ATTRS.jobId]: msg.jobId,
              [TRACE_ATTRS.taskId]: msg.taskId,
              [TRACE_ATTRS.stage]: stage,
              ...(task?.section !== undefined ? { [TRACE_ATTRS.section]: task.section } : {}),
              [TRACE_ATTRS.nodeId]: options.nodeId,
              "messaging.system": "nats",
              "messaging.operation.type": "process",
              "messaging.destination.name": stage,
              // JetStream deliveries of this message (2 and up: redelivered after a node died or handed it back).
              "framefarm.delivery": m.attempt,
            },
          },
          contextOf(msg.trace),
        );
        const traffic = taskTraffic(ctx.store);
        const log = this.log.child({
          jobId: msg.jobId,
          taskId: msg.taskId,
          stage,
          ...(task?.section !== undefined ? { section: task.section } : {}),
          attempt: m.attempt,
        });
        // Cancellation is heard on the job's subject: listen first, then check that the job has not ended already.
        const abort = new AbortController();
        const stopListening = bus.events.subscribe(jobStateSubject(msg.jobId), (subject, data) => {
          const e = decodeJobEvent(subject, data);
          if (e !== null && "state" in e && e.state === "CANCELLED") abort.abort();
        });
        let job: Awaited<ReturnType<typeof readJobState>>;
        try {
          job = await readJobState(kv, msg.jobId, msg.taskId);
        } catch (err) {
          log.warn({ err: errorMessage(err) }, "reading the job's state failed; the task is handed back");
          stopListening();
          recordFailure(span, err);
          span.end();
          throw err;
        }
        const jobState: JobState | null = job?.state ?? null;
        if (
          task === undefined ||
          spec === undefined ||
          jobState === null ||
          jobState === "CANCELLED" ||
          jobState === "FAILED" ||
          jobState === "SUCCEEDED" ||
          abort.signal.aborted
        ) {
          stopListening();
          log.info({ jobState: jobState ?? "missing" }, "task dropped: its job is over");
          span.setAttribute(TRACE_ATTRS.outcome, "dropped");
          span.end();
          m.term(); // the job is gone or over: nothing to do
          return;
        }
        if (job?.taskDone === true) {
          // A second copy (an ack lost in a NATS failover, or a task message queued again): its
          // result is in, and running it again would only redo the work.
          stopListening();
          log.info("task dropped: done already");
          span.setAttribute(TRACE_ATTRS.outcome, "dropped");
          span.end();
          await this.settle(m, log);
          return;
        }
        const onShutdown = (): void => abort.abort(this.shutdown.signal.reason);
        this.shutdown.signal.addEventListener("abort", onShutdown);
        // Keep the lease while working (and reporting), at a third of the ack wait.
        const keepAlive = setInterval(() => m.working(), Math.max(50, ackWaitMs / 3));
        this.inHand.set(task.id, {
          jobId: msg.jobId,
          taskId: task.id,
          stage: stageToPb(stage),
          ...(task.section !== undefined ? { section: task.section } : {}),
          startedAt: timestampOf(Date.parse(startedAt)),
        });
        this.presence?.announce();
        log.info("task started");
        let outcome: { ok: true } | { ok: false; error: string; errorStatus: string; lostInput?: string };
        try {
          try {
            if (options.failStages?.includes(task.kind) === true)
              throw new FarmError("INTERNAL", `failpoint: this node fails every ${task.kind} task`);
            // Refused, not killed: a task whose job cannot fit in this node's memory fails RESOURCE_EXHAUSTED.
            // The mux decodes the last section itself.
            if (task.kind === "denoise" || task.kind === "decode" || task.kind === "mux")
              admitJob(ctx.runtime, spec, process.env, options.presence?.gpus?.() ?? []);
            await runStageTask({ ...ctx, store: traffic.store }, task, spec, {
              signal: abort.signal,
              onPhase: (phase, ms) => {
                phases[phase] = Math.round(((phases[phase] ?? 0) + ms) * 10) / 10;
                // Each phase as a child span, drawn after the fact from its duration.
                if (span.isRecording())
                  tracer()
                    .startSpan(`phase ${phase}`, { startTime: Date.now() - ms }, inSpan(span))
                    .end();
              },
              onStep: (step, steps) => {
                span.addEvent("step", { step, steps });
                bus.events.publish(
                  jobStepSubject(msg.jobId),
                  jobEvents.encode({ jobId: msg.jobId, taskId: task.id, section: task.section ?? 0, step, steps }),
                );
              },
            });
            outcome = { ok: true };
            span.setAttribute(TRACE_ATTRS.outcome, "done");
          } catch (err) {
            if (this.shutdown.signal.aborted) {
              log.info("task handed back: the node is stopping");
              span.setAttribute(TRACE_ATTRS.outcome, "handed_back");
              m.nak(); // another node takes it at once
              return;
            }
            if (abort.signal.aborted) {
              log.info("task stopped: its job was cancelled");
              span.setAttribute(TRACE_ATTRS.outcome, "cancelled");
              m.term();
              return;
            }
            // An input lost in the store (corrupt or gone) is named, so it is recomputed.
            const lost =
              err instanceof LostObjectError && Object.values(task.inputs).includes(err.key) ? err.key : undefined;
            outcome = {
              ok: false,
              error: errorMessage(err),
              errorStatus: err instanceof FarmError ? err.status : "INTERNAL",
              ...(lost !== undefined ? { lostInput: lost } : {}),
            };
            span.setAttribute(TRACE_ATTRS.outcome, "failed");
            recordFailure(span, err);
          }
          const modelMs = ctx.runtime.clock.ms - modelBefore;
          const trace = spanCarrier(span);
          span.setAttributes({
            [TRACE_ATTRS.modelMs]: Math.round(modelMs * 10) / 10,
            [TRACE_ATTRS.bytesRead]: traffic.read,
            [TRACE_ATTRS.bytesWritten]: traffic.written,
          });
          const result = taskResults.encode({
            jobId: msg.jobId,
            taskId: msg.taskId,
            node: options.nodeId,
            startedAt,
            finishedAt: new Date().toISOString(),
            modelMs,
            ...(Object.keys(phases).length > 0 ? { phases } : {}),
            ...(trace !== undefined ? { trace } : {}),
            ...outcome,
          });
          // The task's outcome is reported whatever the bus does meanwhile: a report that failed
          // is not the task failing (that would run it again).
          if (!(await this.report(result, log))) {
            log.warn("result not reported: the task is handed back");
            m.nak(); // the task runs again, here or elsewhere
            return;
          }
        } finally {
          span.end();
          clearInterval(keepAlive);
          this.shutdown.signal.removeEventListener("abort", onShutdown);
          stopListening();
          this.inHand.delete(task.id);
          this.presence?.announce();
        }
        if (outcome.ok) {
          this.failuresInARow = 0;
          this.counts.tasksDone++;
          if (stage === "denoise") this.counts.sectionsDone++;
          log.info({ ms: Date.now() - Date.parse(startedAt) }, "task done");
        } else {
          this.counts.tasksFailed++;
          const lost = outcome.lostInput;
          log.warn(
            { status: outcome.errorStatus, error: outcome.error, ...(lost !== undefined ? { lostInput: lost } : {}) },
            "task failed",
          );
          // The store's bytes failed, not this node: no step towards quarantine.
          if (lost === undefined) this.countFailure(outcome.error);
        }
        await this.settle(m, log);
      },
    );
  }

  /**
   * Puts a result on the results queue, trying again while the bus is away (a NATS failover takes
   * seconds) under one dedup id, so that a send that landed before its answer was lost counts
   * once. False if the node began stopping first, or the bus stayed away for 2 minutes.
   */
  private async report(result: Uint8Array, log: Logger): Promise<boolean> {
    const dedupId = `result-${randomUUID()}`;
    const until = Date.now() + 120_000;
    for (let wait = 250; ; wait = Math.min(wait * 2, 2_000)) {
      try {
        await this.bus.queues.enqueue(RESULTS_QUEUE, result, dedupId);
        return true;
      } catch (err) {
        if (this.shutdown.signal.aborted || Date.now() > until) return false;
        log.warn({ err: errorMessage(err) }, "reporting the result failed; trying again");
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /**
   * Acks a task once its result is in, sending the ack again until the queue confirms it (for up to
   * 30 s: a consumer whose server died has no leader for some seconds, and an ack sent meanwhile is
   * lost). A lost ack has the task handed out again, then dropped as done if its result is recorded
   * by then, and run again if not.
   */
  private async settle(m: Delivery, log: Logger): Promise<void> {
    const until = Date.now() + 30_000;
    for (let wait = 250; ; wait = Math.min(wait * 2, 2_000)) {
      try {
        return await m.confirmAck(2_000);
      } catch (err) {
        if (this.shutdown.signal.aborted) return;
        if (Date.now() + wait > until)
          return log.warn({ err: errorMessage(err) }, "ack not confirmed; the task may be handed out again");
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** Takes no more tasks; those in hand finish and report. The node stays registered, as drained. */
  drain(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info("draining: finishing the tasks in hand, taking no more");
      await this.presence?.setState(NodeState.NODE_STATE_DRAINING);
      await Promise.all(this.consumers.map((c) => c.stop()));
      await this.presence?.setState(NodeState.NODE_STATE_DRAINED);
      this.log.info("drained");
      this.markDrained();
    })();
    return this.stopping;
  }

  /**
   * Takes no more tasks and lets those in hand finish for up to finishMs; then stops them at their
   * next step and hands them back to the queue (another node takes them at once). A task stuck
   * inside one model call cannot be stopped: the caller's deadline ends the process and the
   * queue redelivers the task after its ack wait. Then marks the node stopped in the registry.
   */
  async stop(finishMs = Infinity): Promise<void> {
    this.stopping ??= Promise.all(this.consumers.map((c) => c.stop())).then(() => undefined);
    if (Number.isFinite(finishMs) && (await within(finishMs, this.stopping)).timedOut) {
      this.log.warn({ tasks: [...this.inHand.keys()] }, "stopping: handing back the tasks in hand");
      this.shutdown.abort(new FarmError("CANCELLED", "the node is stopping"));
      await this.stopping;
    } else await this.stopping;
    await this.presence?.stop();
    this.log.info("node stopped");
  }
}
