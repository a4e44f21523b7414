/**
 * The dashboard as the coordinator runs it: the farm view, its metrics, the operator actions
 * (the dispatcher's job actions and registry drains), the submit page's API and the HTTP server,
 * started and stopped as one.
 */
import type { Bus } from "../../shared/bus/bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { Logger } from "../../shared/log/logger.js";
import { DRAIN_BUCKET, NODES_BUCKET, requestDrain } from "../../shared/nodes/node-registry.js";
import type { Dispatcher } from "../dispatch/dispatcher.js";
import { FarmView } from "./farm-view.js";
import { farmMetrics } from "./metrics.js";
import { startDashboardServer, type Authorize, type DashboardActions } from "./http-server.js";
import { tenantApi, type TenantApiOptions } from "./tenant-api.js";

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

export async function startDashboard(o: DashboardOptions): Promise<Dashboard> {
  const view = await FarmView.start(o.bus, o.store, { log: o.log });
  const metrics = farmMetrics(view, o.storeTraffic ?? (() => ({ read: 0, written: 0 })), () => o.dispatcher.leader);
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
  });
  return {
    port: server.port,
    view,
    stop: async () => {
      await server.stop();
      metrics.stop();
      await view.stop();
    },
  };
}
