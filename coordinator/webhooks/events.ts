/**
 * A job's webhook events: what they are, when they happen, how they are written and signed.
 *
 * Events are appended to the job's record in the same revision-checked write as the change they
 * report (dispatch/job-record.ts calls appendWebhookEvents from updateJob), so an event can be
 * neither lost nor invented by a coordinator crash between a change and its notification. Each
 * event's id is `<jobId>.<sequence>`, stable across restarts; receivers may use it to drop a
 * repeat (see deliverer.ts for the one case where one can happen).
 *
 * Body (JSON, UTF-8):
 *   { "id": "<jobId>.<n>", "type": "job.section_done", "sequence": n, "created_at": ISO 8601,
 *     "job_id": "...", "state": "RUNNING", "sections_done": 2, "sections_total": 4,
 *     "section": 1,                       // job.section_done only: the 0-based plan section
 *     "error": "...", "error_status": "INTERNAL" }   // job.failed only
 *
 * Headers: `Framefarm-Event-Id`, `Framefarm-Event-Type`, `Framefarm-Timestamp` (Unix seconds of
 * this attempt) and `Framefarm-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import type { JobState, StageTask } from "../../shared/farm/protocol.js";

export const WEBHOOK_EVENT_TYPES = [
  "job.queued",
  "job.running",
  "job.section_done",
  "job.succeeded",
  "job.failed",
  "job.cancelled",
] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** One event as the job record keeps it (its body is built from it when sent). */
export interface WebhookEvent {
  /** 1, 2, ... in the order the changes happened. */
  seq: number;
  type: WebhookEventType;
  at: string;
  state: JobState;
  sectionsDone: number;
  sectionsTotal: number;
  section?: number;
  error?: string;
  errorStatus?: string;
}

/** The job record's webhook part: where to send and every event so far. */
export interface JobWebhook {
  url: string;
  /** The tenant whose secret signs the events. */
  tenant: string;
  events: WebhookEvent[];
}

/** The part of a job record the events are computed from. */
interface RecordView {
  state: JobState;
  tasks: StageTask[];
  taskStates: Record<string, string>;
  error?: string;
  errorStatus?: string;
  webhook?: JobWebhook;
  recomputes?: Record<string, number>;
}

const STATE_EVENT: Record<JobState, WebhookEventType> = {
  QUEUED: "job.queued",
  RUNNING: "job.running",
  SUCCEEDED: "job.succeeded",
  FAILED: "job.failed",
  CANCELLED: "job.cancelled",
};

const denoiseDone = (r: RecordView): StageTask[] =>
  r.tasks.filter((t) => t.kind === "denoise" && r.taskStates[t.id] === "done");

function event(r: RecordView, type: WebhookEventType, at: string, section?: number): Omit<WebhookEvent, "seq"> {
  return {
    type,
    at,
    state: r.state,
    sectionsDone: denoiseDone(r).length,
    sectionsTotal: r.tasks.filter((t) => t.kind === "denoise").length,
    ...(section !== undefined ? { section } : {}),
    ...(r.state === "FAILED" ? { error: r.error ?? "", errorStatus: r.errorStatus ?? "INTERNAL" } : {}),
  };
}

function push(next: RecordView, e: Omit<WebhookEvent, "seq">): void {
  const events = next.webhook!.events;
  events.push({ seq: events.length + 1, ...e });
}

/** The first event of a new job with a webhook (its record is QUEUED). */
export function appendQueuedEvent(record: RecordView, at: string): void {
  if (record.webhook !== undefined && record.webhook.events.length === 0)
    push(record, event(record, STATE_EVENT[record.state], at));
}

/**
 * Appends to next's webhook the events of the change from prev to next: sections whose denoise
 * finished (in plan order), then the new state, if it changed. A no-op for jobs without a webhook.
 */
export function appendWebhookEvents(prev: RecordView, next: RecordView, at: string): void {
  if (next.webhook === undefined) return;
  const before = new Set(denoiseDone(prev).map((t) => t.id));
  for (const t of denoiseDone(next))
    // A section recomputed after its history was lost in storage was announced the first time.
    if (!before.has(t.id) && (next.recomputes?.[t.id] ?? 0) === 0)
      push(next, event(next, "job.section_done", at, t.section ?? 0));
  if (next.state !== prev.state) push(next, event(next, STATE_EVENT[next.state], at));
}

export const eventId = (jobId: string, e: WebhookEvent): string => `${jobId}.${e.seq}`;

/** The JSON body of an event (snake_case, as the proto's JSON names are on the wire). */
export function eventBody(jobId: string, e: WebhookEvent): string {
  return JSON.stringify({
    id: eventId(jobId, e),
    type: e.type,
    sequence: e.seq,
    created_at: e.at,
    job_id: jobId,
    state: e.state,
    sections_done: e.sectionsDone,
    sections_total: e.sectionsTotal,
    ...(e.section !== undefined ? { section: e.section } : {}),
    ...(e.error !== undefined ? { error: e.error, error_status: e.errorStatus ?? "INTERNAL" } : {}),
  });
}

export const SIGNATURE_HEADER = "Framefarm-Signature";
export const TIMESTAMP_HEADER = "Framefarm-Timestamp";
export const EVENT_ID_HEADER = "Framefarm-Event-Id";
export const EVENT_TYPE_HEADER = "Framefarm-Event-Type";

/** `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the Framefarm-Signature header. */
export function signature(secret: string, timestamp: number, body: string): string {
  return `v1=${createHmac("sha256", secret).update(`${timestamp}.${body}`, "utf8").digest("hex")}`;
}

/**
 * A receiver's check (as in README): the signature must match and the timestamp be within
 * toleranceS of now (replays of an old delivery are refused).
 */
export function verifySignature(
  secret: string,
  header: { signature: string | null | undefined; timestamp: string | null | undefined },
  body: string,
  toleranceS = 300,
  nowS = Math.floor(Date.now() / 1000),
): boolean {
  const t = Number(header.timestamp);
  if (!/^\d+$/.test(header.timestamp ?? "") || Math.abs(nowS - t) > toleranceS) return false;
  const want = Buffer.from(signature(secret, t, body));
  const got = Buffer.from(header.signature ?? "");
  return got.length === want.length && timingSafeEqual(got, want);
}
