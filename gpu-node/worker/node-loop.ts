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
}

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const dec = <T>(b: Uint8Array): T => JSON.parse(new TextDecoder().decode(b)) as T;

/** The durable consumer nodes of one stage share (KEDA's autoscaler names it too: deploy/k8s). */
export const stageConsumerName = (stage: string): string => `stage-${stage}`;

export class NodeLoop {
  private constructor(private readonly consumers: Consumer[]) {}

  static async start(bus: Bus, ctx: WorkerContext, options: NodeOptions): Promise<NodeLoop> {
    const kv: KeyValue = await bus.kv(JOBS_BUCKET);
    const ackWaitMs = options.ackWaitMs ?? 30_000;
    const consumers: Consumer[] = [];
    for (const stage of options.stages) {
      await bus.queues.ensure(stage);
      consumers.push(
        await bus.queues.consume(stage, { name: stageConsumerName(stage), ackWaitMs, maxDeliver: options.maxDeliver ?? 10 }, async (m) => {
          const msg = dec<TaskMessage>(m.data);
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
            await runStageTask(ctx, task, job.record.spec, {
              signal: abort.signal,
              onStep: (step, steps) =>
                bus.events.publish(jobEventSubject(msg.jobId), enc({ jobId: msg.jobId, taskId: task.id, section: task.section ?? 0, step, steps } satisfies StepEvent)),
            });
            await report({ ok: true });
          } catch (err) {
            if (abort.signal.aborted) {
              m.term();
              return;
            }
            await report({ ok: false, error: (err as Error).message, errorStatus: err instanceof FarmError ? err.status : "INTERNAL" });
          } finally {
            clearInterval(keepAlive);
          }
          m.ack();
        }),
      );
    }
    return new NodeLoop(consumers);
  }

  async stop(): Promise<void> {
    await Promise.all(this.consumers.map((c) => c.stop()));
  }
}
