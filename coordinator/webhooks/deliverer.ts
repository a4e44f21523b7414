/**
 * Sends jobs' webhook events, in order per job, off the dispatcher's path: the dispatcher only
 * calls notify(jobId) after it writes a record; a loop per job (at most `concurrency` sending at
 * once) reads the record's events and POSTs those past the job's delivery cursor.
 *
 * - Retries: a send fails on a network error, a timeout (`timeoutMs`, 10 s) or any answer but 2xx
 *   (redirects are not followed). It is tried again after retryBaseMs * 2^(n-1) (1 s, 2 s, 4 s, ...,
 *   at most retryMaxMs, 5 min), each with a fresh timestamp and signature, up to maxAttempts (10)
 *   in all; then the event is given up (logged, kept in the cursor's `abandoned`) and the next one
 *   goes. A job's later events wait for its earlier ones.
 * - Dedup: the cursor (bucket `webhook_cursors`, one key per job: the number of events done) is
 *   written after each 2xx and read on start, so a restarted coordinator resumes with the first
 *   event not yet acknowledged and sends no event twice. The one window left is a crash between a
 *   2xx and the cursor's write; the event's id (`Framefarm-Event-Id`) is then the same on the repeat.
 *   One coordinator sends a farm's webhooks (as one dispatcher advances its jobs).
 */
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { FarmError } from "../../shared/errors.js";
import type { Logger } from "../../shared/log/logger.js";
import { readJob } from "../dispatch/job-record.js";
import {
  EVENT_ID_HEADER,
  EVENT_TYPE_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  eventBody,
  eventId,
  signature,
} from "./events.js";
import type { WebhookPolicy } from "./policy.js";

export const WEBHOOK_CURSORS_BUCKET = "webhook_cursors";

export interface DelivererOptions {
  retryBaseMs?: number;
  retryMaxMs?: number;
  maxAttempts?: number;
  timeoutMs?: number;
  /** Jobs sending at once. */
  concurrency?: number;
  log?: Logger;
}

interface Cursor {
  /** Events done (acknowledged or given up): the next to send is events[done]. */
  done: number;
  /** Ids of events given up after maxAttempts. */
  abandoned?: string[];
}
const cursors = jsonCodec<Cursor>();

export class WebhookDeliverer {
  private readonly running = new Map<string, Promise<void>>();
  /** Jobs notified while their loop ran: it goes round once more. */
  private readonly again = new Set<string>();
  private readonly waiting: (() => void)[] = [];
  private active = 0;
  private stopped = false;
  private readonly stopping = new AbortController();
  private readonly o: Required<Omit<DelivererOptions, "log">>;

  private constructor(
    private readonly jobs: KeyValue,
    private readonly cursorKv: KeyValue,
    private readonly policy: WebhookPolicy,
    private readonly log: Logger | undefined,
    options: DelivererOptions,
  ) {
    this.o = {
      retryBaseMs: options.retryBaseMs ?? 1000,
      retryMaxMs: options.retryMaxMs ?? 300_000,
      maxAttempts: options.maxAttempts ?? 10,
      timeoutMs: options.timeoutMs ?? 10_000,
      concurrency: options.concurrency ?? 8,
    };
  }

  /** Starts and resumes every job whose events are not all sent. */
  static async start(bus: Bus, policy: WebhookPolicy, options: DelivererOptions = {}): Promise<WebhookDeliverer> {
    const d = new WebhookDeliverer(
      await bus.kv(JOBS_BUCKET),
      await bus.kv(WEBHOOK_CURSORS_BUCKET),
      policy,
      options.log,
      options,
    );
    for (const jobId of await d.jobs.keys()) {
      const r = await readJob(d.jobs, jobId);
      if (r?.record.webhook !== undefined && (await d.cursor(jobId)).done < r.record.webhook.events.length)
        d.notify(jobId);
    }
    return d;
  }

  /** The job's record changed: send its new events (returns at once). */
  notify(jobId: string): void {
    if (this.stopped) return;
    if (this.running.has(jobId)) {
      this.again.add(jobId);
      return;
    }
    const loop = this.run(jobId)
      .catch((err: unknown) => {
        // The bus was away (reading the record or writing the cursor): try the job again shortly.
        this.log?.warn({ jobId, err: (err as Error).message }, "webhook delivery interrupted");
        setTimeout(() => this.notify(jobId), this.o.retryBaseMs).unref();
      })
      .finally(() => {
        this.running.delete(jobId);
        if (this.again.delete(jobId)) this.notify(jobId);
      });
    this.running.set(jobId, loop);
  }

  private async cursor(jobId: string): Promise<Cursor & { revision: number | null }> {
    const e = await this.cursorKv.get(jobId);
    return e === null ? { done: 0, revision: null } : { ...cursors.decode(e.value), revision: e.revision };
  }

  private async saveCursor(jobId: string, prev: { revision: number | null }, next: Cursor): Promise<void> {
    const data = cursors.encode(next);
    if (prev.revision === null) await this.cursorKv.create(jobId, data);
    else await this.cursorKv.update(jobId, data, prev.revision);
  }

  private async run(jobId: string): Promise<void> {
    await this.slot();
    try {
      while (!this.stopped) {
        const r = await readJob(this.jobs, jobId);
        const hook = r?.record.webhook;
        if (hook === undefined) return;
        const cur = await this.cursor(jobId);
        const e = hook.events[cur.done];
        if (e === undefined) return;
        const delivered = await this.send(hook.url, hook.tenant, jobId, e);
        if (delivered === null) return; // stopping: the next coordinator sends it
        const next: Cursor = { ...cur, done: cur.done + 1 };
        delete (next as { revision?: unknown }).revision;
        if (!delivered) next.abandoned = [...(cur.abandoned ?? []), eventId(jobId, e)].slice(-100);
        await this.saveCursor(jobId, cur, next);
      }
    } finally {
      this.release();
    }
  }

  /** True on a 2xx, false when given up, null when stopped first. */
  private async send(
    url: string,
    tenant: string,
    jobId: string,
    e: Parameters<typeof eventBody>[1],
  ): Promise<boolean | null> {
    const body = eventBody(jobId, e);
    const id = eventId(jobId, e);
    let lastError = "";
    for (let attempt = 1; attempt <= this.o.maxAttempts; attempt++) {
      if (this.stopped) return null;
      try {
        // Checked before every attempt: the name may resolve elsewhere than at submission.
        await this.policy.checkAddresses(new URL(url));
        const t = Math.floor(Date.now() / 1000);
        const res = await fetch(url, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "user-agent": "framefarm-webhooks/1",
            [EVENT_ID_HEADER]: id,
            [EVENT_TYPE_HEADER]: e.type,
            [TIMESTAMP_HEADER]: String(t),
            [SIGNATURE_HEADER]: signature(this.policy.secretFor(tenant), t, body),
          },
          body,
          redirect: "manual",
          // Not aborted by stop(): an attempt under way finishes, and its 2xx is recorded.
          signal: AbortSignal.timeout(this.o.timeoutMs),
        });
        await res.body?.cancel().catch(() => undefined);
        if (res.status >= 200 && res.status < 300) return true;
        lastError = `HTTP ${res.status}`;
      } catch (err) {
        lastError = err instanceof FarmError ? err.message : String((err as Error).cause ?? (err as Error).message);
      }
      this.log?.info({ jobId, event: id, attempt, error: lastError }, "webhook delivery failed");
      if (this.stopped) return null;
      if (attempt < this.o.maxAttempts) {
        const delay = Math.min(this.o.retryMaxMs, this.o.retryBaseMs * 2 ** (attempt - 1));
        await new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            this.stopping.signal.removeEventListener("abort", done);
            resolve();
          };
          const timer = setTimeout(done, delay);
          this.stopping.signal.addEventListener("abort", done, { once: true });
        });
      }
    }
    this.log?.warn({ jobId, event: id, error: lastError }, "webhook event given up");
    return false;
  }

  private async slot(): Promise<void> {
    if (this.active < this.o.concurrency) {
      this.active++;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next !== undefined) next();
    else this.active--;
  }

  /**
   * Stops sending: an attempt under way finishes (at most timeoutMs) and a 2xx moves its cursor;
   * waits between attempts end at once; the next coordinator goes on from the cursors.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    for (const w of this.waiting.splice(0)) w();
    await Promise.all([...this.running.values()]);
  }
}
