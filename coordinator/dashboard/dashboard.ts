/**
 * The dashboard as the coordinator runs it: the farm view, its metrics and last hour's history,
 * job timelines, the operator actions (the dispatcher's job actions and registry drains), the submit
 * page's API and the HTTP server, started and stopped as one.
 */
import type { Bus } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { Logger } from "../../shared/log/logger.js";
import { DRAIN_BUCKET, NODES_BUCKET, requestDrain } from "../../shared/nodes/node-registry.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { FarmError } from "../../shared/errors.js";
import { readJob } from "../dispatch/job-record.js";
import type { Dispatcher } from "../dispatch/dispatcher.js";
import { FarmView } from "./farm-view.js";
import { farmMetrics } from "./metrics.js";
import { startDashboardServer, type Authorize, type DashboardActions } from "./http-server.js";
import { tenantApi, type TenantApiOptions } from "./tenant-api.js";
import { DEFAULT_SAMPLE_MS, startFarmHistory } from "./farm-history.js";
import { jobTimeline, type JobTimeline } from "./job-timeline.js";

export interface DashboardOptions {
  bus: Bus;
  store: ObjectStore;
  dispatcher: Dispatcher;
  host: string;
  port: number;
  log: Logger;
  authorize?: Authorize;
  /** Subscribes to token changes: open event streams are then checked again (TokenAuth.onChange). */
  authChanges?: (fn: () => void) => () => void;
  /** The gate of /metrics alone (authorize when absent). */
  authorizeMetrics?: Authorize;
  /** The job API behind the submit page (/submit, for tenants' tokens); without it the page has no API. */
  jobs?: TenantApiOptions["jobs"];
  /** The coordinator's own object-store bytes. */
  storeTraffic?: () => { read: number; written: number };
  /** How often the charts' history is sampled (historySampleMs; default 10 s). */
  historySampleMs?: number;
}

export interface Dashboard {
  readonly port: number;
  readonly view: FarmView;
  stop(): Promise<void>;
}

export async function dashboardActions(bus: Bus, dispatcher: Dispatcher): Promise<DashboardActions> {
  const [nodes, drains] = [await bus.kv(NODES_BUCKET), await bus.kv(DRAIN_BUCKET)];
  return {
    cancel: (id) => dispatcher.cancel(id),
    retry: (id) => dispatcher.retry(id),
    setPriority: (id, priority) => dispatcher.setPriority(id, priority),
    drain: (id) => requestDrain(nodes, drains, id),
  };
}

/** A job's timeline from its record and the tasks nodes hold now (as the view last saw them). */
async function timelineReader(bus: Bus, view: FarmView): Promise<(jobId: string) => Promise<JobTimeline>> {
  const jobs = await bus.kv(JOBS_BUCKET);
  return async (jobId) => {
    const r = (await readJob(jobs, jobId))?.record;
    if (r === undefined) throw new FarmError("NOT_FOUND", `job ${jobId} does not exist`);
    const s = view.snapshot();
    const at = Date.parse(s.at);
    const inHand = s.nodes
      .filter((n) => n.status !== "gone")
      .flatMap((n) =>
        n.currentTasks
          .filter((t) => t.jobId === jobId)
          .map((t) => ({ taskId: t.taskId, node: n.id, startedAtMs: at - t.runningMs })),
      );
    return jobTimeline(r, inHand, Date.now());
  };
}

export async function startDashboard(o: DashboardOptions): Promise<Dashboard> {
  const view = await FarmView.start(o.bus, o.store, { log: o.log });
  const metrics = farmMetrics(
    view,
    o.storeTraffic ?? (() => ({ read: 0, written: 0 })),
    () => o.dispatcher.leader,
    () => ({ tasks: o.dispatcher.strandedRequeued, results: o.dispatcher.strandedResultsRequeued }),
  );
  const history = startFarmHistory(view, { intervalMs: o.historySampleMs ?? DEFAULT_SAMPLE_MS });
  const server = await startDashboardServer({
    view,
    metrics,
    actions: await dashboardActions(o.bus, o.dispatcher),
    host: o.host,
    port: o.port,
    log: o.log,
    ...(o.authorize !== undefined ? { authorize: o.authorize } : {}),
    ...(o.authorizeMetrics !== undefined ? { authorizeMetrics: o.authorizeMetrics } : {}),
    ...(o.authChanges !== undefined ? { authChanges: o.authChanges } : {}),
    ...(o.jobs !== undefined ? { tenantApi: tenantApi({ jobs: o.jobs, bus: o.bus, log: o.log }) } : {}),
    history: () => history.history.view(Date.now()),
    timeline: await timelineReader(o.bus, view),
  });
  return {
    port: server.port,
    view,
    stop: async () => {
      await server.stop();
      history.stop();
      metrics.stop();
      await view.stop();
    },
  };
}
