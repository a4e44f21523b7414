/**
 * One job followed through its bus events as WatchJob streams it: its state first, then for each
 * event the job as it is now: a state change, live progress (a step event, on the record already
 * read: no state read per step), and each newly decoded section's preview. The gRPC WatchJob and
 * the submit page's event stream (tenant-job-feed.ts) both follow jobs with it.
 */
import type { Job, WatchJobResponse } from "../../proto/gen/framefarm/v1/jobs.js";
import { isStepEvent, type JobSubjectEvent, type StepEvent } from "../../shared/farm/protocol.js";
import type { JobRecord } from "../dispatch/job-record.js";
import { previewOf } from "../dispatch/job-views.js";

/** A WatchJobResponse before its stream numbers and times it. */
export type WatchEvent = Pick<WatchJobResponse, "event" | "job">;

/** Where a watch reads jobs: only the tenant's (another's is NOT_FOUND), as the API shows them. */
export interface WatchedJobs {
  get(id: string, tenant: string): Promise<JobRecord>;
  toJob(r: JobRecord, live?: StepEvent): Promise<Job>;
}

const TERMINAL = new Set<JobRecord["state"]>(["SUCCEEDED", "FAILED", "CANCELLED"]);

export class JobWatch {
  private live: StepEvent | undefined;

  private constructor(
    private readonly jobs: WatchedJobs,
    private readonly tenant: string,
    private record: JobRecord,
  ) {}

  /** Watches a job of the tenant (NOT_FOUND for any other); first is its current state. */
  static async start(jobs: WatchedJobs, id: string, tenant: string): Promise<{ watch: JobWatch; first: WatchEvent }> {
    const watch = new JobWatch(jobs, tenant, await jobs.get(id, tenant));
    return { watch, first: await watch.event(true) };
  }

  /** True once the job has ended: nothing follows. */
  get ended(): boolean {
    return TERMINAL.has(this.record.state);
  }

  /** The events one of the job's bus events makes, in order. */
  async next(e: JobSubjectEvent): Promise<WatchEvent[]> {
    if (isStepEvent(e)) {
      this.live = e;
      return [await this.event(false)];
    }
    const next = await this.jobs.get(this.record.spec.jobId, this.tenant);
    const changed = next.state !== this.record.state;
    this.record = next;
    const out = [await this.event(changed)];
    const preview = previewOf(next, e.taskId);
    if (preview !== undefined && next.state !== "CANCELLED") out.push(await this.event(false, preview));
    return out;
  }

  private async event(stateChanged: boolean, previewKey?: string): Promise<WatchEvent> {
    const job = await this.jobs.toJob(this.record, this.live);
    return {
      event:
        previewKey !== undefined
          ? { $case: "previewKey", value: previewKey }
          : stateChanged
            ? { $case: "state", value: job.state }
            : { $case: "progress", value: job.progress! },
      job,
    };
  }
}
