/**
 * The contract between the coordinator and the GPU nodes, the one both sides import: the stage
 * kinds, the task a node runs (everything it needs is in the task's queue message), the result it
 * reports, the events on a job's subject, and the names of the queues, buckets and subjects.
 * A node never reads the coordinator's job record; the one read it may make of the jobs bucket is
 * `readJobState` below (has the job ended, or the task been done, before the node took it?).
 */
import type { KeyValue } from "../bus/bus.js";
import type { JobSpec } from "../job/job-spec.js";
import { StageKind as PbStageKind } from "../../proto/gen/framefarm/v1/node.js";
import { jsonCodec } from "./codec.js";
import type { TraceCarrier } from "../telemetry/tracing.js";

// ---- stages ----------------------------------------------------------------------------------

export type StageKind = "encode_text" | "encode_image" | "vae_encode" | "denoise" | "decode" | "mux";
export const STAGE_KINDS: readonly StageKind[] = [
  "encode_text",
  "encode_image",
  "vae_encode",
  "denoise",
  "decode",
  "mux",
];

/** The stage kinds as node.proto spells them: mapped here and nowhere else. */
const STAGE_TO_PB: Record<StageKind, PbStageKind> = {
  encode_text: PbStageKind.STAGE_KIND_ENCODE_TEXT,
  encode_image: PbStageKind.STAGE_KIND_ENCODE_IMAGE,
  vae_encode: PbStageKind.STAGE_KIND_VAE_ENCODE,
  denoise: PbStageKind.STAGE_KIND_DENOISE,
  decode: PbStageKind.STAGE_KIND_DECODE,
  mux: PbStageKind.STAGE_KIND_MUX,
};
export const stageToPb = (s: StageKind): PbStageKind => STAGE_TO_PB[s];
export function stageFromPb(s: PbStageKind): StageKind | null {
  const hit = Object.entries(STAGE_TO_PB).find(([, v]) => v === s);
  return hit === undefined ? null : (hit[0] as StageKind);
}

// ---- names -----------------------------------------------------------------------------------

/** Each stage's work queue is named by its kind; nodes report on this one. */
export const RESULTS_QUEUE = "results";
/** The coordinator's job records, one key per job id. */
export const JOBS_BUCKET = "jobs";
/** The durable consumer nodes of one stage share (KEDA's autoscaler names it too: deploy/k8s). */
export const stageConsumerName = (stage: string): string => `stage-${stage}`;
/** A job's events: its state changes (JobEvent) and its live denoise steps (StepEvent). */
export const jobEventSubject = (jobId: string): string => `ff.events.job.${jobId}`;
/** A node's registry record, on every heartbeat and task change. */
export const nodeEventSubject = (nodeId: string): string => `ff.events.node.${nodeId}`;
/** Every job's events, and every node's. */
export const ALL_JOB_EVENTS = jobEventSubject("*");
export const ALL_NODE_EVENTS = nodeEventSubject("*");

// ---- tasks -----------------------------------------------------------------------------------

export type JobState = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED";

export interface StageTask {
  /** Unique within the farm: `<jobId>.<kind>` or `<jobId>.<kind>.<section>`. */
  id: string;
  jobId: string;
  kind: StageKind;
  section?: number;
  dependsOn: string[];
  inputs: Record<string, string>;
  outputs: Record<string, string>;
  /** Generator seed and the number of 32-bit draws to skip before this task's first draw. */
  rng?: { seed: string; offset: number };
}

/** A stage queue's message: the task and its job's spec, all a node needs to run it. */
export interface TaskMessage {
  jobId: string;
  taskId: string;
  task: StageTask;
  spec: JobSpec;
  /** Nodes that failed this task since the job's last retry: another node should take it. */
  avoidNodes?: string[];
  /** W3C trace context of the span that dispatched it (shared/telemetry): absent when not tracing. */
  trace?: TraceCarrier;
}

export interface TaskResult {
  jobId: string;
  taskId: string;
  ok: boolean;
  error?: string;
  /** gRPC status name of the failure. */
  errorStatus?: string;
  node: string;
  /** When the node started and finished the task (ISO 8601). */
  startedAt?: string;
  finishedAt?: string;
  /** Of that time, milliseconds inside model execution (exact when the node runs one task at a time). */
  modelMs?: number;
  /** Of that time, milliseconds per named phase of the task (read, write, preview, encode...). */
  phases?: Record<string, number>;
  /** W3C trace context of the node's span of the task: absent when not tracing. */
  trace?: TraceCarrier;
}

/** Published by a node after each denoise step (not stored: live progress only). */
export interface StepEvent {
  jobId: string;
  taskId: string;
  section: number;
  step: number;
  steps: number;
}

/** Published by the coordinator when a job's state or progress changes. */
export interface JobEvent {
  jobId: string;
  state: JobState;
  done: number;
  total: number;
  taskId?: string;
}

/** What arrives on a job's subject. */
export type JobSubjectEvent = JobEvent | StepEvent;
export const isStepEvent = (e: JobSubjectEvent): e is StepEvent => typeof (e as Partial<StepEvent>).step === "number";

export const taskMessages = jsonCodec<TaskMessage>();
export const taskResults = jsonCodec<TaskResult>();
export const jobEvents = jsonCodec<JobSubjectEvent>();

/**
 * The state of a job as the jobs bucket holds it (null: no such job), and whether the task taskId
 * is done. The two fields of a job's record that are part of this contract: a node checks them
 * once before it starts a task (a task of an ended job is dropped, and so is a second copy of a
 * task done already: a queue delivers at least once, and after a NATS failover an ack can be lost)
 * and hears later changes on the job's subject.
 */
export async function readJobState(
  kv: KeyValue,
  jobId: string,
  taskId?: string,
): Promise<{ state: JobState; taskDone: boolean } | null> {
  const e = await kv.get(jobId);
  if (e === null) return null;
  const r = jsonCodec<{ state: JobState; taskStates?: Record<string, string> }>().decode(e.value);
  return { state: r.state, taskDone: taskId !== undefined && r.taskStates?.[taskId] === "done" };
}
