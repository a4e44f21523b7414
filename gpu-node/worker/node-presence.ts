/**
 * A node's entry in the registry: written when the node starts, rewritten at every heartbeat with
 * what it is doing, and marked stopped on a clean exit. At each heartbeat the node also looks for
 * an operator's drain request and hands it to onDrain once.
 */
import os from "node:os";
import type { Bus, KeyValue } from "../../shared/bus/bus.js";
import {
  DRAIN_BUCKET,
  NODES_BUCKET,
  NodeState,
  encodeNode,
  putLatest,
  timestampOf,
  type NodeRecord,
} from "../../shared/nodes/node-registry.js";
import { nodeEventSubject } from "../../shared/farm/protocol.js";
import type { CurrentTask, GpuStats, NodeCapabilities } from "../../proto/gen/framefarm/v1/node.js";

export interface NodeIdentity {
  nodeId: string;
  capabilities: NodeCapabilities;
  version: string;
}

/** What the heartbeat reports; read at each beat. */
export interface NodeActivity {
  currentTasks(): CurrentTask[];
  counters(): { tasksDone: number; tasksFailed: number; sectionsDone: number; bytesRead: number; bytesWritten: number };
  /** The node's GPUs as last sampled (gpu-stats.ts); absent or empty on a node without one. */
  gpus?(): GpuStats[];
}

export const DEFAULT_HEARTBEAT_MS = 2000;

export class NodePresence {
  private timer: NodeJS.Timeout | undefined;
  private state = NodeState.NODE_STATE_ACTIVE;
  private stateReason = "";
  private drainSeen = false;
  private beating: Promise<void> = Promise.resolve();
  private readonly startedAt = Date.now();

  private constructor(
    private readonly bus: Bus,
    private readonly nodes: KeyValue,
    private readonly drains: KeyValue,
    private readonly identity: NodeIdentity,
    private readonly activity: NodeActivity,
    private readonly intervalMs: number,
    private readonly onDrain: () => void,
    private readonly onError: (err: unknown) => void,
  ) {}

  static async start(
    bus: Bus,
    identity: NodeIdentity,
    activity: NodeActivity,
    options: { intervalMs?: number; onDrain: () => void; onError?: (err: unknown) => void },
  ): Promise<NodePresence> {
    const p = new NodePresence(
      bus,
      await bus.kv(NODES_BUCKET),
      await bus.kv(DRAIN_BUCKET),
      identity,
      activity,
      options.intervalMs ?? DEFAULT_HEARTBEAT_MS,
      options.onDrain,
      options.onError ?? (() => undefined),
    );
    // A drain request left from this id's previous run is over: starting again means serving again.
    await p.drains.delete(identity.nodeId);
    await p.beat();
    p.timer = setInterval(() => void p.beat(), p.intervalMs);
    return p;
  }

  private record(): NodeRecord {
    const c = this.activity.counters();
    return {
      nodeId: this.identity.nodeId,
      capabilities: this.identity.capabilities,
      version: this.identity.version,
      hostname: os.hostname(),
      startedAt: timestampOf(this.startedAt),
      heartbeatIntervalMs: this.intervalMs,
      heartbeatAt: timestampOf(Date.now()),
      state: this.state,
      currentTasks: this.activity.currentTasks(),
      tasksDone: BigInt(c.tasksDone),
      tasksFailed: BigInt(c.tasksFailed),
      sectionsDone: BigInt(c.sectionsDone),
      bytesRead: BigInt(c.bytesRead),
      bytesWritten: BigInt(c.bytesWritten),
      stateReason: this.stateReason,
      gpus: this.activity.gpus?.() ?? [],
    };
  }

  /** Writes the record now (heartbeats never overlap) and checks for a drain request. */
  beat(): Promise<void> {
    this.beating = this.beating.then(async () => {
      try {
        const record = encodeNode(this.record());
        await putLatest(this.nodes, this.identity.nodeId, record);
        this.bus.events.publish(nodeEventSubject(this.identity.nodeId), record);
        if (
          !this.drainSeen &&
          this.state === NodeState.NODE_STATE_ACTIVE &&
          (await this.drains.get(this.identity.nodeId)) !== null
        ) {
          this.drainSeen = true;
          this.onDrain();
        }
      } catch (err) {
        this.onError(err);
      }
    });
    return this.beating;
  }

  /**
   * Announces the record without storing it (a task started or ended): dashboards see the task in
   * hand at once instead of at the next heartbeat, at the cost of one event, no KV write.
   */
  announce(): void {
    this.bus.events.publish(nodeEventSubject(this.identity.nodeId), encodeNode(this.record()));
  }

  /** Records a state change at once (draining, drained). */
  setState(state: NodeState, reason = ""): Promise<void> {
    this.state = state;
    this.stateReason = reason;
    return this.beat();
  }

  /** Stops heartbeating; the record says STOPPED so the node is not mistaken for a dead one. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.setState(NodeState.NODE_STATE_STOPPED);
  }
}
