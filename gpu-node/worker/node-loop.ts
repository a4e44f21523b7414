/**
 * A GPU node's work loop: consumes the work queues of the stages it serves, runs each task, sends
 * in-progress acks while it works (so a long denoise is not redelivered), reports the result on
 * the results queue and only then acks. A node that dies mid-task never acks: the queue
 * redelivers the task to another node after the ack wait.
 */
import type { Bus, Consumer, KeyValue } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import type { StageKind } from "../../coordinator/planner/job-plan.js";
import { JOBS_BUCKET, RESULTS_QUEUE, jobEventSubject, type StepEvent, type TaskMessage, type TaskResult } from "../../coordinator/dispatch/dispatcher.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import { runStageTask, type WorkerContext } from "./stage-worker.js";

export interface NodeOptions {
  nodeId: string;
  stages: readonly StageKind[];
  /** Redelivery after this long without an ack or an in-progress signal. */
  ackWaitMs?: number;
  maxDeliver?: number;
  /** After this many failed tasks in a row the node takes no more work (0: never). Default 3. */
  quarantineAfter?: number;
  onQuarantine?(reason: string): void;
  /** Stages whose tasks this node fails on purpose: fault injection for tests and drills. */
  failStages?: readonly StageKind[];
}

/** Times a node passes a task it already failed on to other nodes before it runs it anyway (it may be the only one). */
const PASS_ON = 3;

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const dec = <T>(b: Uint8Array): T => JSON.parse(new TextDecoder().decode(b)) as T;

/** The durable consumer nodes of one stage share (KEDA's autoscaler names it too: deploy/k8s). */
export const stageConsumerName = (stage: string): string => `stage-${stage}`;

export class NodeLoop {
  private readonly consumers: Consumer[] = [];
  private failuresInARow = 0;
  /** Why the node stopped taking work, once quarantined. */
  quarantined: string | null = null;

  private constructor(private readonly options: NodeOptions) {}

  /** A node that fails task after task is likely broken (driver, memory, disk): it stops taking work. */
  private countFailure(message: string): void {
    const limit = this.options.quarantineAfter ?? 3;
    if (++this.failuresInARow < limit || limit === 0 || this.quarantined !== null) return;
    this.quarantined = `${this.failuresInARow} tasks failed in a row; last: ${message}`;
    this.options.onQuarantine?.(this.quarantined);
    // Not awaited: the task in hand (this one) finishes first.
    void Promise.all(this.consumers.map((c) => c.stop()));
  }

  static async start(bus: Bus, ctx: WorkerContext, options: NodeOptions): Promise<NodeLoop> {
    const kv: KeyValue = await bus.kv(JOBS_BUCKET);
    const ackWaitMs = options.ackWaitMs ?? 30_000;
    const loop = new NodeLoop(options);
    const consumers = loop.consumers;
    for (const stage of options.stages) {
      await bus.queues.ensure(stage);
      consumers.push(
        await bus.queues.consume(stage, { name: stageConsumerName(stage), ackWaitMs, maxDeliver: options.maxDeliver ?? 10 }, async (m) => {
          const msg = dec<TaskMessage>(m.data);
          if (msg.avoidNodes?.includes(options.nodeId) === true && m.attempt <= PASS_ON) {
            m.nak(200); // this node failed it before: let another node take it
            return;
          }
          const startedAt = new Date().toISOString();
          const modelBefore = ctx.runtime.clock.ms;
          const report = async (result: Omit<TaskResult, "jobId" | "taskId" | "node" | "startedAt" | "finishedAt" | "modelMs">): Promise<void> => {
            const finishedAt = new Date().toISOString();
            const modelMs = ctx.runtime.clock.ms - modelBefore;
            await bus.queues.enqueue(RESULTS_QUEUE, enc({ jobId: msg.jobId, taskId: msg.taskId, node: options.nodeId, startedAt, finishedAt, modelMs, ...result } satisfies TaskResult));
          };
          const job = await readJob(kv, msg.jobId);
          const task = job?.record.tasks.find((t) => t.id === msg.taskId);
          if (job === null || task === undefined || job.record.state === "CANCELLED" || job.record.state === "FAILED") {
            m.term(); // the job is gone or over: nothing to do
            return;
          }
          // Keep the lease while working, at a third of the ack wait; stop if the job is cancelled.
          const abort = new AbortController();
          const keepAlive = setInterval(() => {
            m.working();
            void readJob(kv, msg.jobId).then((j) => j?.record.state === "CANCELLED" && abort.abort(), () => undefined);
          }, Math.max(50, ackWaitMs / 3));
          try {
            if (options.failStages?.includes(task.kind) === true) throw new FarmError("INTERNAL", `failpoint: this node fails every ${task.kind} task`);
            await runStageTask(ctx, task, job.record.spec, {
              signal: abort.signal,
              onStep: (step, steps) =>
                bus.events.publish(jobEventSubject(msg.jobId), enc({ jobId: msg.jobId, taskId: task.id, section: task.section ?? 0, step, steps } satisfies StepEvent)),
            });
            await report({ ok: true });
            loop.failuresInARow = 0;
          } catch (err) {
            if (abort.signal.aborted) {
              m.term();
              return;
            }
            await report({ ok: false, error: (err as Error).message, errorStatus: err instanceof FarmError ? err.status : "INTERNAL" });
            loop.countFailure((err as Error).message);
          } finally {
            clearInterval(keepAlive);
          }
          m.ack();
        }),
      );
    }
    return loop;
  }

  async stop(): Promise<void> {
    await Promise.all(this.consumers.map((c) => c.stop()));
  }
}
