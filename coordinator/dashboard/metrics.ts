/**
 * Prometheus metrics of the farm (prom-client), served on /metrics: stage durations and retries
 * from finished task attempts, and queue depths, job states, node liveness and object-store bytes
 * read from the latest farm snapshot at scrape time.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { FarmView } from "./farm-view.js";

export interface FarmMetrics {
  readonly registry: Registry;
  stop(): void;
}

/**
 * storeTraffic: the coordinator's own object-store bytes (inputs it stores, results it reads);
 * leader: whether this coordinator dispatches now (it holds the farm's leader lease).
 */
export function farmMetrics(
  view: FarmView,
  storeTraffic: () => { read: number; written: number },
  leader: () => boolean = () => true,
  stranded: () => { tasks: number; results: number } = () => ({ tasks: 0, results: 0 }),
): FarmMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "framefarm_coordinator_" });
  new Gauge({
    name: "framefarm_coordinator_leader",
    help: "1 while this coordinator holds the leader lease and dispatches, 0 while it only serves the API",
    registers: [registry],
    collect() {
      this.set(leader() ? 1 : 0);
    },
  });
  new Counter({
    name: "framefarm_stranded_tasks_requeued_total",
    help: "Messages a queue stored but would never hand out (a NATS consumer that lost them), queued again by this coordinator: stage tasks, results",
    labelNames: ["queue"] as const,
    registers: [registry],
    collect() {
      this.reset();
      const n = stranded();
      this.inc({ queue: "tasks" }, n.tasks);
      this.inc({ queue: "results" }, n.results);
    },
  });
  const duration = new Histogram({
    name: "framefarm_stage_duration_seconds",
    help: "Wall time of a stage task attempt on a node, by stage and outcome",
    labelNames: ["stage", "outcome"] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    registers: [registry],
  });
  const retries = new Counter({
    name: "framefarm_task_retries_total",
    help: "Failed task attempts (each is retried until the task runs out of attempts), by stage",
    labelNames: ["stage"] as const,
    registers: [registry],
  });
  const off = view.onAttempt((a) => {
    duration.observe({ stage: a.stage, outcome: a.ok ? "ok" : "failed" }, a.seconds);
    if (!a.ok) retries.inc({ stage: a.stage });
  });

  const queue = (name: string, help: string, field: "waiting" | "inFlight" | "redelivered" | "idleWorkers"): void =>
    void new Gauge({
      name,
      help,
      labelNames: ["stage"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const q of view.snapshot().queues) this.set({ stage: q.stage }, q[field]);
      },
    });
  queue("framefarm_queue_depth", "Stage tasks waiting on their work queue", "waiting");
  queue("framefarm_queue_in_flight", "Stage tasks delivered to a node and not yet acked", "inFlight");
  queue("framefarm_queue_redelivered", "Unacked stage tasks delivered more than once", "redelivered");
  queue("framefarm_queue_idle_workers", "Nodes waiting for a task of this stage", "idleWorkers");
  new Gauge({
    name: "framefarm_jobs",
    help: "Jobs by state",
    labelNames: ["state"] as const,
    registers: [registry],
    collect() {
      for (const [state, n] of Object.entries(view.snapshot().jobStates)) this.set({ state }, n);
    },
  });
  new Gauge({
    name: "framefarm_node_up",
    help: "1 while a registered node heartbeats (active, draining or drained), 0 once stopped or gone",
    labelNames: ["node"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const n of view.snapshot().nodes)
        this.set({ node: n.id }, n.status === "gone" || n.status === "stopped" ? 0 : 1);
    },
  });
  new Counter({
    name: "framefarm_object_store_bytes_total",
    help: "Bytes moved through the object store, by node (or coordinator) and direction",
    labelNames: ["node", "direction"] as const,
    registers: [registry],
    collect() {
      // The counts live in the nodes (reported at each heartbeat); this mirrors them.
      this.reset();
      const own = storeTraffic();
      this.inc({ node: "coordinator", direction: "read" }, own.read);
      this.inc({ node: "coordinator", direction: "written" }, own.written);
      for (const n of view.snapshot().nodes) {
        this.inc({ node: n.id, direction: "read" }, n.bytesRead);
        this.inc({ node: n.id, direction: "written" }, n.bytesWritten);
      }
    },
  });
  return { registry, stop: off };
}
