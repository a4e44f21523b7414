/**
 * `framefarm node`: a GPU node process. Serves the stage groups it is started with, from one
 * bundle on one execution provider, until SIGINT/SIGTERM; a task in hand is finished first.
 */
import { parseArgs } from "node:util";
import os from "node:os";
import { FarmError } from "../../shared/errors.js";
import type { StageKind } from "../planner/job-plan.js";
import { openEmbedded } from "../embedded/open.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { TensorCache } from "../../gpu-node/worker/tensor-cache.js";
import { FARM_OPTIONS, connectFarm, farmConnection, stopParts, untilSignal } from "./farm-options.js";
import { stopGraceMs } from "../../shared/shutdown.js";
import { defaultBundleDir } from "./defaults.js";
import { createLogger } from "../../shared/log/logger.js";
import { validateNodeId } from "../../shared/nodes/node-registry.js";
import { DEFAULT_HEARTBEAT_MS } from "../../gpu-node/worker/node-presence.js";
import { FRAMEFARM_VERSION } from "../../shared/version.js";
import path from "node:path";

/** Stage groups as operators name them; a group is what one model (set) serves. */
export const STAGE_GROUPS: Record<string, StageKind[]> = {
  text: ["encode_text"],
  image: ["encode_image"],
  vae: ["vae_encode", "decode", "mux"],
  denoise: ["denoise"],
};

export function parseStages(value: string): StageKind[] {
  const groups = value === "all" ? Object.keys(STAGE_GROUPS) : value.split(",").map((s) => s.trim());
  const stages = new Set<StageKind>();
  for (const g of groups) {
    const kinds = STAGE_GROUPS[g];
    if (kinds === undefined) throw new FarmError("INVALID_ARGUMENT", `unknown stage group ${JSON.stringify(g)}: use ${Object.keys(STAGE_GROUPS).join(", ")} or all`);
    for (const k of kinds) stages.add(k);
  }
  return [...stages];
}

export async function nodeCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...FARM_OPTIONS,
      stages: { type: "string" },
      bundle: { type: "string" },
      ep: { type: "string" },
      id: { type: "string" },
      device: { type: "string" },
      "cache-mb": { type: "string" },
      "heartbeat-ms": { type: "string" },
      "ack-wait-ms": { type: "string" },
      "quarantine-after": { type: "string" },
    },
  });
  // Flags win over FRAMEFARM_STAGES / _EP / _NODE_ID / _CACHE_MB (containers set those: deploy/k8s).
  const env = process.env;
  const stages = parseStages(values.stages ?? env["FRAMEFARM_STAGES"] ?? "all");
  const conn = farmConnection(values);
  // Registry keys are [A-Za-z0-9_-]: a dotted host name becomes dashed.
  const nodeId = validateNodeId(values.id ?? env["FRAMEFARM_NODE_ID"] ?? `${os.hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 64));
  const heartbeatMs = Number(values["heartbeat-ms"] ?? DEFAULT_HEARTBEAT_MS);
  if (!Number.isInteger(heartbeatMs) || heartbeatMs < 100) throw new FarmError("INVALID_ARGUMENT", `--heartbeat-ms must be an integer >= 100, got ${values["heartbeat-ms"]}`);
  const ep = values.ep ?? env["FRAMEFARM_EP"] ?? "cpu";
  const bundleDir = values.bundle ?? defaultBundleDir();
  const embedded = await openEmbedded(bundleDir, ep);
  const { bus, store } = await connectFarm(conn, `node ${nodeId}`);
  const cacheMbText = values["cache-mb"] ?? env["FRAMEFARM_CACHE_MB"] ?? "512";
  const cacheMb = Number(cacheMbText);
  if (!Number.isFinite(cacheMb) || cacheMb < 0) throw new FarmError("INVALID_ARGUMENT", `--cache-mb must be a non-negative number, got ${cacheMbText}`);
  // How long a task of a node that died stays leased before another node gets it.
  const ackWaitMs = Number(values["ack-wait-ms"] ?? 30_000);
  if (!Number.isInteger(ackWaitMs) || ackWaitMs < 500) throw new FarmError("INVALID_ARGUMENT", `--ack-wait-ms must be a whole number >= 500, got ${values["ack-wait-ms"]}`);
  const quarantineAfter = Number(values["quarantine-after"] ?? 3);
  if (!Number.isInteger(quarantineAfter) || quarantineAfter < 0) throw new FarmError("INVALID_ARGUMENT", `--quarantine-after must be a whole number (0: never), got ${values["quarantine-after"]}`);
  // Fault injection for drills and tests: this node fails every task of these stages.
  const failStages = env["FRAMEFARM_FAILPOINT_STAGES"] === undefined ? [] : parseStages(env["FRAMEFARM_FAILPOINT_STAGES"]);
  const log = createLogger("node");
  const loop = await NodeLoop.start(bus, { ...embedded, store, cache: new TensorCache(cacheMb * 2 ** 20) }, {
    nodeId,
    stages,
    ackWaitMs,
    quarantineAfter,
    failStages,
    log,
    presence: {
      bundle: path.basename(path.resolve(bundleDir)),
      executionProvider: ep,
      // The CPU model for cpu; a GPU provider does not name its adapter, so the operator can.
      device: values.device ?? (ep === "cpu" ? (os.cpus()[0]?.model ?? "cpu") : `${ep} default adapter`),
      version: FRAMEFARM_VERSION,
      heartbeatMs,
      traffic: () => store.traffic,
    },
  });
  await untilSignal();
  // The task in hand gets half the grace period to finish; then it is handed back to the queue.
  await stopParts(log, [
    { name: "node loop", run: () => loop.stop(stopGraceMs() / 2) },
    { name: "NATS connection", run: () => bus.close() },
    { name: "models", run: () => embedded.close() },
  ]);
  return 0;
}
