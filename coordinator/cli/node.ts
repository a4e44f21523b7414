/**
 * `framefarm node`: a GPU node process. Serves the stage groups it is started with, from one
 * bundle on one execution provider, until SIGINT/SIGTERM; a task in hand is finished first.
 */
import { parseArgs } from "node:util";
import os from "node:os";
import { FarmError } from "../../shared/errors.js";
import { parseStages, startNode } from "../../gpu-node/main.js";
import { FARM_OPTIONS, connectFarm, farmConnection, stopParts, untilSignal } from "./farm-options.js";
import { stopGraceMs } from "../../shared/shutdown.js";
import { defaultBundleDir } from "./defaults.js";
import { createLogger } from "../../shared/log/logger.js";
import { validateNodeId } from "../../shared/nodes/node-registry.js";
import { DEFAULT_HEARTBEAT_MS } from "../../gpu-node/worker/node-presence.js";

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
  const nodeId = validateNodeId(
    values.id ??
      env["FRAMEFARM_NODE_ID"] ??
      `${os.hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 64),
  );
  const heartbeatMs = Number(values["heartbeat-ms"] ?? DEFAULT_HEARTBEAT_MS);
  if (!Number.isInteger(heartbeatMs) || heartbeatMs < 100)
    throw new FarmError("INVALID_ARGUMENT", `--heartbeat-ms must be an integer >= 100, got ${values["heartbeat-ms"]}`);
  const ep = values.ep ?? env["FRAMEFARM_EP"] ?? "cpu";
  const cacheMbText = values["cache-mb"] ?? env["FRAMEFARM_CACHE_MB"] ?? "512";
  const cacheMb = Number(cacheMbText);
  if (!Number.isFinite(cacheMb) || cacheMb < 0)
    throw new FarmError("INVALID_ARGUMENT", `--cache-mb must be a non-negative number, got ${cacheMbText}`);
  const ackWaitMs = Number(values["ack-wait-ms"] ?? 30_000);
  if (!Number.isInteger(ackWaitMs) || ackWaitMs < 500)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `--ack-wait-ms must be a whole number >= 500, got ${values["ack-wait-ms"]}`,
    );
  const quarantineAfter = Number(values["quarantine-after"] ?? 3);
  if (!Number.isInteger(quarantineAfter) || quarantineAfter < 0)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `--quarantine-after must be a whole number (0: never), got ${values["quarantine-after"]}`,
    );
  const failStages =
    env["FRAMEFARM_FAILPOINT_STAGES"] === undefined ? [] : parseStages(env["FRAMEFARM_FAILPOINT_STAGES"]);
  const { bus, store } = await connectFarm(conn, `node ${nodeId}`);
  const log = createLogger("node");
  const node = await startNode(bus, store, {
    nodeId,
    stages,
    bundleDir: values.bundle ?? defaultBundleDir(),
    ep,
    ...(values.device !== undefined ? { device: values.device } : {}),
    cacheBytes: cacheMb * 2 ** 20,
    heartbeatMs,
    ackWaitMs,
    quarantineAfter,
    failStages,
    log,
  }).catch(async (err: unknown) => {
    await bus.close();
    throw err;
  });
  await untilSignal();
  // Bounded whatever is gone already (NATS, the object store): the task in hand gets half the grace
  // period to finish, then it is handed back to the queue.
  await stopParts(log, [
    { name: "node", run: () => node.stop(stopGraceMs() / 2) },
    { name: "NATS connection", run: () => bus.close() },
  ]);
  return 0;
}
