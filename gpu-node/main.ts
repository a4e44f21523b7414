/**
 * A GPU node: opens a bundle's models on one execution provider and serves the stages it is given
 * from the farm's queues (gpu-node/worker/node-loop.ts), registered and heartbeating, until
 * stopped. `framefarm node` parses its flags and calls startNode; embedded mode and
 * check-reference open the same models with openNodeModels.
 */
import os from "node:os";
import path from "node:path";
import { FarmError } from "../shared/errors.js";
import type { Bus } from "../shared/bus/bus.js";
import type { StageKind } from "../shared/farm/protocol.js";
import type { Logger } from "../shared/log/logger.js";
import type { ObjectStore } from "../shared/store/object-store.js";
import { FRAMEFARM_VERSION } from "../shared/version.js";
import { refuseNodeVaeTiling } from "../shared/job/vae-tiling-env.js";
import { openBundle } from "./runtime/bundle.js";
import { parseExecutionProvider } from "./runtime/execution-provider.js";
import { ModelRuntime } from "./runtime/model-runtime.js";
import { loadTextTokenizers } from "./text/tokenizers.js";
import { NodeLoop, decodeConcurrencyFor } from "./worker/node-loop.js";
import { decodedTileCacheBytes } from "./stages/decode-latents.js";
import { TensorCache } from "./worker/tensor-cache.js";
import { gpuSamplerFor } from "./worker/gpu-stats.js";
import type { RenderContext } from "./stages/render-job.js";
import { STAGE_COMPONENTS, warmUp, warmUpJobsForSize, type WarmUpSize } from "./stages/warm-up.js";

export interface NodeModels extends RenderContext {
  close(): Promise<void>;
}

/** The bundle, its ONNX sessions on one execution provider (created on first use), and the tokenizers. */
export async function openNodeModels(bundleDir: string, ep: string): Promise<NodeModels> {
  const provider = parseExecutionProvider(ep);
  const bundle = await openBundle(bundleDir);
  const tokenizers = await loadTextTokenizers(bundle);
  const runtime = new ModelRuntime(bundle, { ep: provider });
  return { runtime, tokenizers, close: () => runtime.close() };
}

/** Stage groups as operators name them; a group is what one model (set) serves. */
export const STAGE_GROUPS: Record<string, StageKind[]> = {
  text: ["encode_text"],
  image: ["encode_image"],
  vae: ["vae_encode", "decode", "mux"],
  denoise: ["denoise"],
};

/** "text,vae" or "all" -> the stage kinds those groups serve. */
export function parseStages(value: string): StageKind[] {
  const groups = value === "all" ? Object.keys(STAGE_GROUPS) : value.split(",").map((s) => s.trim());
  const stages = new Set<StageKind>();
  for (const g of groups) {
    const kinds = STAGE_GROUPS[g];
    if (kinds === undefined)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `unknown stage group ${JSON.stringify(g)}: use ${Object.keys(STAGE_GROUPS).join(", ")} or all`,
      );
    for (const k of kinds) stages.add(k);
  }
  return [...stages];
}

export interface NodeSettings {
  nodeId: string;
  stages: readonly StageKind[];
  bundleDir: string;
  ep: string;
  /** What the registry shows as the device; by default the CPU model, or the provider's default adapter. */
  device?: string;
  cacheBytes: number;
  heartbeatMs: number;
  /** How long a task of a node that died stays leased before another node gets it. */
  ackWaitMs: number;
  quarantineAfter: number;
  /** Fault injection for drills and tests: this node fails every task of these stages. */
  failStages: readonly StageKind[];
  log: Logger;
  /**
   * Sizes to warm the models of this node's stages up for before it takes tasks: a GPU's first run
   * at a new shape is slow (cuDNN's algorithm search), and a job should not pay it.
   */
  warmupSizes?: readonly WarmUpSize[];
}

/**
 * "640x480,512x512:tiled" (width x height, multiples of 16) -> sizes; "" -> none. VAE tiling is a
 * job option, so a plain size warms both decodes; ":tiled" or ":untiled" warms only that one.
 */
export function parseWarmupSizes(value: string): WarmUpSize[] {
  if (value.trim() === "") return [];
  return value.split(",").map((part) => {
    const m = /^\s*(\d+)x(\d+)(?::(tiled|untiled))?\s*$/.exec(part);
    const [w, h] = m === null ? [NaN, NaN] : [Number(m[1]), Number(m[2])];
    if (!(w >= 16 && h >= 16 && w % 16 === 0 && h % 16 === 0))
      throw new FarmError(
        "INVALID_ARGUMENT",
        `--warmup takes WxH[:tiled|:untiled][,...] with multiples of 16, got ${JSON.stringify(part.trim())}`,
      );
    const tiling = m![3];
    return { width: w, height: h, ...(tiling !== undefined ? { vaeTiling: tiling === "tiled" } : {}) };
  });
}

/**
 * Warms the models of the given stages up for jobs of these sizes (the bundle's default window and
 * mode; untiled and tiled decodes unless a size names one).
 */
export async function warmUpNode(
  models: RenderContext,
  stages: readonly StageKind[],
  sizes: readonly WarmUpSize[],
  log?: Logger,
): Promise<void> {
  const components = [...new Set(stages.flatMap((s) => STAGE_COMPONENTS[s]))];
  if (components.length === 0) return;
  for (const size of sizes) {
    const r = await warmUp(models.runtime, models.tokenizers, warmUpJobsForSize(models.runtime, size), { components });
    const tiling = size.vaeTiling === undefined ? "untiled and tiled" : size.vaeTiling ? "tiled" : "untiled";
    log?.info({ size: `${size.width}x${size.height}`, vae: tiling, ms: Math.round(r.ms), runs: r.runs }, "warmed up");
  }
}

export interface RunningNode {
  loop: NodeLoop;
  /**
   * Finishes the task in hand (for up to finishMs, then hands it back to the queue), leaves the
   * registry and closes the models (the bus and store stay open).
   */
  stop(finishMs?: number): Promise<void>;
}

/** Starts a node on a connected bus and store. */
export async function startNode(
  bus: Bus,
  store: ObjectStore & { traffic: { read: number; written: number } },
  s: NodeSettings,
): Promise<RunningNode> {
  refuseNodeVaeTiling();
  const models = await openNodeModels(s.bundleDir, s.ep);
  if (s.warmupSizes !== undefined && s.warmupSizes.length > 0)
    await warmUpNode(models, s.stages, s.warmupSizes, s.log).catch(async (err: unknown) => {
      await models.close();
      throw err;
    });
  // CUDA nodes with nvidia-smi report their GPU's load in each heartbeat; other nodes none.
  const gpus = await gpuSamplerFor(s.ep, {
    intervalMs: s.heartbeatMs,
    onError: (err) => s.log.warn({ err }, "nvidia-smi failed: GPU figures left out of heartbeats until it works"),
  });
  // Read at every decode; a bad value is refused here, at start, instead of failing each decode.
  decodedTileCacheBytes();
  const loop = await NodeLoop.start(
    bus,
    { ...models, store, cache: new TensorCache(s.cacheBytes) },
    {
      nodeId: s.nodeId,
      stages: s.stages,
      ackWaitMs: s.ackWaitMs,
      decodeConcurrency: decodeConcurrencyFor(s.ep),
      quarantineAfter: s.quarantineAfter,
      failStages: s.failStages,
      log: s.log,
      presence: {
        bundle: path.basename(path.resolve(s.bundleDir)),
        executionProvider: s.ep,
        // The CPU model for cpu; a GPU provider does not name its adapter, so the operator can.
        device: s.device ?? (s.ep === "cpu" ? (os.cpus()[0]?.model ?? "cpu") : `${s.ep} default adapter`),
        version: FRAMEFARM_VERSION,
        heartbeatMs: s.heartbeatMs,
        traffic: () => store.traffic,
        ...(gpus !== undefined ? { gpus: () => gpus.latest() } : {}),
      },
    },
  ).catch(async (err: unknown) => {
    await gpus?.stop();
    throw err;
  });
  return {
    loop,
    stop: async (finishMs) => {
      await loop.stop(finishMs);
      await gpus?.stop();
      await models.close();
    },
  };
}
