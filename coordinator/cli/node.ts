/**
 * `framefarm node`: a GPU node process. Serves the stage groups it is started with, from one
 * bundle on one execution provider, until SIGINT/SIGTERM; a task in hand is finished first.
 */
import { parseArgs } from "node:util";
import os from "node:os";
import { FarmError } from "../../shared/errors.js";
import { parseStages, parseWarmupSizes, startNode } from "../../gpu-node/main.js";
import { refuseNodeVaeTiling } from "../../shared/job/vae-tiling-env.js";
import {
  FARM_OPTIONS,
  TRACING_HELP,
  TRACING_OPTIONS,
  connectFarm,
  farmConnection,
  startProcessTracing,
  stopParts,
  untilSignal,
} from "./farm-options.js";
import { stopGraceMs } from "../../shared/shutdown.js";
import { defaultBundleDir } from "./defaults.js";
import { createLogger } from "../../shared/log/logger.js";
import { validateNodeId } from "../../shared/nodes/node-registry.js";
import { DEFAULT_HEARTBEAT_MS } from "../../gpu-node/worker/node-presence.js";
import { defaultCacheMb } from "../../gpu-node/worker/tensor-cache.js";

const HELP = `framefarm node — a GPU node: serves stage tasks from the farm's queues until SIGINT/SIGTERM

  --nats URL[,URL...]     NATS server(s) of one cluster (FRAMEFARM_NATS)  [required]
  --s3 HOST:PORT          object store (FRAMEFARM_S3)                     [required]
  --bucket NAME           object store bucket (FRAMEFARM_S3_BUCKET, framefarm)
  --stages G,G|all        stage groups: text, image, vae, denoise (FRAMEFARM_STAGES, all)
  --bundle DIR            model bundle (default: the tiny test bundle)
  --ep cpu|webgpu|cuda    execution provider (FRAMEFARM_EP, cpu)
  --warmup WxH[,WxH...]   before taking tasks, run the models of this node's stages once at every
                          shape a job of each size gives them (the bundle's window and mode), so
                          no job pays a GPU's slow first run at a new shape (FRAMEFARM_WARMUP);
                          the VAE decoder untiled and tiled (jobs choose --vae-tiling), or only
                          one with WxH:untiled or WxH:tiled
  --id ID                 node id (FRAMEFARM_NODE_ID, host-pid)
  --device NAME           device name the registry shows
  --cache-mb N            decoded-object cache (FRAMEFARM_CACHE_MB; 4096 on cuda, else 512)
  --heartbeat-ms N        registry heartbeat interval (2000)
  --ack-wait-ms N         how long a task of a dead node stays leased (30000)
  --quarantine-after N    failed tasks in a row before the node stops taking tasks (3; 0: never)
${TRACING_HELP}`;

export async function nodeCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...FARM_OPTIONS,
      ...TRACING_OPTIONS,
      stages: { type: "string" },
      bundle: { type: "string" },
      ep: { type: "string" },
      id: { type: "string" },
      device: { type: "string" },
      "cache-mb": { type: "string" },
      "heartbeat-ms": { type: "string" },
      "ack-wait-ms": { type: "string" },
      "quarantine-after": { type: "string" },
      warmup: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  // Flags win over FRAMEFARM_STAGES / _EP / _NODE_ID / _CACHE_MB (containers set those: deploy/k8s).
  const env = process.env;
  refuseNodeVaeTiling(env);
  const stages = parseStages(values.stages ?? env["FRAMEFARM_STAGES"] ?? "all");
  const warmupSizes = parseWarmupSizes(values.warmup ?? env["FRAMEFARM_WARMUP"] ?? "");
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
  const cacheMbText = values["cache-mb"] ?? env["FRAMEFARM_CACHE_MB"] ?? String(defaultCacheMb(ep));
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
  const log = createLogger("node");
  // Before anything connects: a bad setting is refused before the node joins the farm.
  const tracing = await startProcessTracing("framefarm-node", values["otlp-endpoint"], nodeId, log);
  const { bus, store } = await connectFarm(conn, `node ${nodeId}`);
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
    warmupSizes,
  }).catch(async (err: unknown) => {
    await bus.close();
    await tracing.shutdown();
    throw err;
  });
  await untilSignal();
  // Bounded whatever is gone already (NATS, the object store): the task in hand gets half the grace
  // period to finish, then it is handed back to the queue.
  await stopParts(log, [
    { name: "node", run: () => node.stop(stopGraceMs() / 2) },
    { name: "NATS connection", run: () => bus.close() },
    // Last: the spans of the tasks just finished or handed back go out too.
    { name: "tracing", run: () => tracing.shutdown() },
  ]);
  return 0;
}
