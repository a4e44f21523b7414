/**
 * Every job of one tenant, live, for the submit page's event stream: first the tenant's newest
 * jobs, then each change of any of them as WatchJob reports it (a JobWatch per job, started at
 * the job's first event seen here), in order. Denoise steps come many a second; per job only the
 * latest within stepCoalesceMs is reported. Another tenant's job is read once to learn whose it is
 * and skipped after, so a tenant learns nothing of other tenants' jobs.
 */
import type { Job, WatchJobResponse } from "../../proto/gen/framefarm/v1/jobs.js";
import type { Bus } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import type { Logger } from "../../shared/log/logger.js";
import {
  ALL_JOB_EVENTS,
  isStepEvent,
  jobEvents,
  type JobSubjectEvent,
  type StepEvent,
} from "../../shared/farm/protocol.js";
import { JobWatch, type WatchedJobs } from "./job-watch.js";
import { timestamp } from "./job-mapping.js";

export type FeedEvent = { type: "jobs"; jobs: Job[] } | { type: "job"; response: WatchJobResponse };

export interface FeedSource extends WatchedJobs {
  newest(tenant: string, limit: number): Promise<Job[]>;
}

export interface TenantJobFeedOptions {
  /** Jobs in the first event, newest first. */
  limit?: number;
  stepCoalesceMs?: number;
  log: Logger;
}

/** Other tenants' job ids remembered at most; past that the set starts again (a re-read each). */
const MAX_FOREIGN = 10_000;

export class TenantJobFeed {
  private readonly watches = new Map<string, JobWatch>();
  private readonly foreign = new Set<string>();
  private readonly pendingSteps = new Map<string, { event: StepEvent; timer: NodeJS.Timeout }>();
  private chain: Promise<void>;
  private sequence = 0n;
  private stopped = false;
  private readonly off: () => void;

  constructor(
    bus: Bus,
    private readonly jobs: FeedSource,
    private readonly tenant: string,
    private readonly send: (e: FeedEvent) => void,
    private readonly options: TenantJobFeedOptions,
  ) {
    // Subscribed before listing: events during the listing wait in the chain behind it.
    this.off = bus.events.subscribe(ALL_JOB_EVENTS, (_subject, data) => this.onEvent(jobEvents.decode(data)));
    this.chain = jobs
      .newest(tenant, options.limit ?? 50)
      .then((list) => this.emit({ type: "jobs", jobs: list }))
      .catch((err: unknown) => this.failed(err));
  }

  stop(): void {
    this.stopped = true;
    this.off();
    for (const p of this.pendingSteps.values()) clearTimeout(p.timer);
    this.pendingSteps.clear();
  }

  private emit(e: FeedEvent): void {
    if (!this.stopped) this.send(e);
  }

  private failed(err: unknown): void {
    this.options.log.warn({ err, tenant: this.tenant }, "tenant job feed: an event could not be followed");
  }

  private onEvent(e: JobSubjectEvent): void {
    if (this.stopped || this.foreign.has(e.jobId)) return;
    if (!isStepEvent(e)) return this.enqueue(e);
    const pending = this.pendingSteps.get(e.jobId);
    if (pending !== undefined) return void (pending.event = e);
    const entry = {
      event: e,
      timer: setTimeout(() => {
        this.pendingSteps.delete(e.jobId);
        this.enqueue(entry.event);
      }, this.options.stepCoalesceMs ?? 250),
    };
    this.pendingSteps.set(e.jobId, entry);
  }

  private enqueue(e: JobSubjectEvent): void {
    this.chain = this.chain.then(() => this.follow(e)).catch((err: unknown) => this.failed(err));
  }

  private async follow(e: JobSubjectEvent): Promise<void> {
    if (this.stopped) return;
    const id = e.jobId;
    let watch = this.watches.get(id);
    if (watch === undefined) {
      if (this.foreign.has(id)) return;
      let started: Awaited<ReturnType<typeof JobWatch.start>>;
      try {
        started = await JobWatch.start(this.jobs, id, this.tenant);
      } catch (err) {
        if (!(err instanceof FarmError && err.status === "NOT_FOUND")) throw err;
        if (this.foreign.size >= MAX_FOREIGN) this.foreign.clear();
        this.foreign.add(id);
        return;
      }
      this.respond(started.first);
      if (started.watch.ended) return;
      watch = started.watch;
      this.watches.set(id, watch);
      // The record just read already shows what a state event says; a step event adds its step.
      if (!isStepEvent(e)) return;
    }
    for (const next of await watch.next(e)) this.respond(next);
    if (watch.ended) this.watches.delete(id);
  }

  private respond(e: Pick<WatchJobResponse, "event" | "job">): void {
    this.emit({
      type: "job",
      response: { jobId: e.job!.id, sequence: ++this.sequence, at: timestamp(new Date().toISOString()), ...e },
    });
  }
}
