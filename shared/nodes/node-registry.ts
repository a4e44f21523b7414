/**
 * The node registry as both sides see it: GPU nodes write their NodeRecord (proto/framefarm/v1/
 * node.proto, protobuf-encoded) under their id in the KV bucket "nodes"; an operator's drain is a
 * DrainRequest under the node's id in "node-drain". Each heartbeat's record is also published on
 * ff.events.node.<id>, and so is the record when a task starts or ends (not stored), so dashboards
 * follow nodes without polling the bucket.
 */
import type { KeyValue } from "../bus/bus.js";
import { FarmError } from "../errors.js";
import { DrainRequest, NodeRecord, NodeState, StageKind as PbStageKind } from "../../proto/gen/framefarm/v1/node.js";
import type { Timestamp } from "../../proto/gen/google/protobuf/timestamp.js";

export { NodeRecord, NodeState, PbStageKind as StageKindPb };
export const NODES_BUCKET = "nodes";
export const DRAIN_BUCKET = "node-drain";
/** Heartbeats missed before a node counts as gone. */
export const MISSED_HEARTBEATS = 3;

const NODE_ID = /^[A-Za-z0-9_-]{1,64}$/;
export function validateNodeId(id: string): string {
  if (!NODE_ID.test(id))
    throw new FarmError("INVALID_ARGUMENT", `node id ${JSON.stringify(id)} must be 1-64 of [A-Za-z0-9_-]`);
  return id;
}

export function timestampOf(ms: number): Timestamp {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}
export const msOf = (t: Timestamp | undefined): number =>
  t === undefined ? 0 : Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000);

export const encodeNode = (r: NodeRecord): Uint8Array => NodeRecord.encode(r).finish();
export const decodeNode = (b: Uint8Array): NodeRecord => NodeRecord.decode(b);

export async function readNodes(kv: KeyValue): Promise<NodeRecord[]> {
  const out: NodeRecord[] = [];
  for (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e !== null) out.push(decodeNode(e.value));
  }
  return out;
}

/** A node is gone when it has missed MISSED_HEARTBEATS heartbeats (a clean stop says so itself). */
export function isGone(r: NodeRecord, nowMs: number): boolean {
  return (
    r.state === NodeState.NODE_STATE_STOPPED || nowMs - msOf(r.heartbeatAt) > MISSED_HEARTBEATS * r.heartbeatIntervalMs
  );
}

/** A node stopped or silent this long is history: off the dashboard, and its record is removed. */
export const FORGET_NODES_AFTER_MS = 3_600_000;

/**
 * Removes the records (and drain requests) of nodes stopped or silent for FORGET_NODES_AFTER_MS:
 * nodes that come and go under new ids (autoscaled pods) would otherwise fill the bucket. A node
 * that comes back under its id registers again at its next heartbeat.
 */
export async function forgetGoneNodes(nodes: KeyValue, drains: KeyValue, nowMs: number): Promise<string[]> {
  const gone = (await readNodes(nodes))
    .filter((r) => isGone(r, nowMs) && nowMs - msOf(r.heartbeatAt) >= FORGET_NODES_AFTER_MS)
    .map((r) => r.nodeId);
  for (const id of gone) {
    await nodes.delete(id);
    await drains.delete(id);
  }
  return gone;
}

/** Writes value under key whatever is there (for keys with one writer: a node's own record). */
export async function putLatest(kv: KeyValue, key: string, value: Uint8Array): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const cur = await kv.get(key);
    try {
      await (cur === null ? kv.create(key, value) : kv.update(key, value, cur.revision));
      return;
    } catch (err) {
      if (!(err instanceof FarmError) || (err.status !== "ABORTED" && err.status !== "ALREADY_EXISTS")) throw err;
    }
  }
  throw new FarmError("ABORTED", `key ${key}: too much contention`);
}

/**
 * Asks a node to drain: at its next heartbeat it stops taking tasks and finishes those in hand.
 * NOT_FOUND for a node that never registered.
 */
export async function requestDrain(nodes: KeyValue, drains: KeyValue, nodeId: string): Promise<void> {
  validateNodeId(nodeId);
  if ((await nodes.get(nodeId)) === null) throw new FarmError("NOT_FOUND", `node ${nodeId} is not registered`);
  await putLatest(drains, nodeId, DrainRequest.encode({ requestedAt: timestampOf(Date.now()) }).finish());
}
