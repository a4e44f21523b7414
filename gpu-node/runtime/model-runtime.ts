/**
 * The ONNX sessions of one bundle on one execution provider. Sessions are created on first use and
 * kept warm: a node that serves only denoise never loads the text encoders.
 */
import { FarmError } from "../../shared/errors.js";
import { COMPONENT_NAMES, type AnyComponentName, type ComponentName } from "../../shared/bundle/manifest.js";
import type { Bundle } from "./bundle.js";
import { assertExecutionProviderAvailable } from "./execution-provider.js";
import { OnnxModel, type ModelClock, type SessionSettings } from "./onnx-model.js";

/**
 * Scores per block of query rows in the VAE's chunked attention. Under glibc's largest mmap
 * threshold (32 MiB), so with the arena off the blocks are reused from the heap rather than
 * mapped and faulted in afresh on every loop iteration.
 */
export const DEFAULT_ATTENTION_BLOCK_BYTES = 16 * 2 ** 20;
const CHUNKED_ATTENTION_COMPONENTS: ReadonlySet<AnyComponentName> = new Set(["vae_encoder", "vae_decoder"]);
/**
 * Components whose sessions keep onnxruntime's CPU memory arena: the transformer runs the same
 * shapes every step, so its arena is reused; every other session gives its memory back after each
 * run, so that a process holds the transformer's arena plus one other stage at a time, not the sum
 * of every session's peak (test/bench/memory/RESULTS.md).
 */
const CPU_ARENA_COMPONENTS: ReadonlySet<AnyComponentName> = new Set([
  "transformer",
  "transformer_head",
  "transformer_body",
  "transformer_tail",
]);

/**
 * FRAMEFARM_SESSION_WORKERS: "1" runs each session on a worker thread of its own
 * (SessionSettings.sessionWorker), "0" on the node's thread; unset: workers on CUDA, where a decode
 * and a denoise can share the GPU, the node's thread on the CPU provider (its cores are already
 * busy with one run) and on WebGPU.
 */
export function sessionWorkersFromEnv(ep: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env["FRAMEFARM_SESSION_WORKERS"];
  if (v === undefined || v === "") return ep === "cuda";
  if (v === "1" || v === "0") return v === "1";
  throw new RangeError(`FRAMEFARM_SESSION_WORKERS must be 0 or 1, got ${JSON.stringify(v)}`);
}

export class ModelRuntime {
  private readonly sessions = new Map<AnyComponentName, Promise<OnnxModel>>();
  /** Time spent inside onnxruntime by every session of this runtime. */
  readonly clock: ModelClock = { ms: 0 };

  constructor(
    readonly bundle: Bundle,
    readonly settings: SessionSettings,
  ) {
    assertExecutionProviderAvailable(settings.ep);
  }

  model(name: AnyComponentName): Promise<OnnxModel> {
    let pending = this.sessions.get(name);
    if (pending === undefined) {
      pending = this.load(name);
      this.sessions.set(name, pending);
      // A failed load must not poison the cache: the next call retries.
      pending.catch(() => this.sessions.delete(name));
    }
    return pending;
  }

  /**
   * The settings a component's session gets. On the CPU provider the VAE's mid-block attention
   * (over every token of a decode tile: [N, N] scores with N = frames x h x w, 3.58 GB each at
   * 640x640) runs in blocks of query rows, bit-identically, so a decode stays under 2 GB; and only
   * the transformer keeps a memory arena (CPU_ARENA_COMPONENTS).
   */
  settingsFor(name: AnyComponentName): SessionSettings {
    const worker =
      this.settings.sessionWorker === undefined ? { sessionWorker: sessionWorkersFromEnv(this.settings.ep) } : {};
    if (this.settings.ep !== "cpu") return { ...worker, ...this.settings };
    const chunked =
      this.settings.attentionBlockBytes === undefined && CHUNKED_ATTENTION_COMPONENTS.has(name)
        ? { attentionBlockBytes: DEFAULT_ATTENTION_BLOCK_BYTES }
        : {};
    return { cpuMemArena: CPU_ARENA_COMPONENTS.has(name), ...worker, ...this.settings, ...chunked };
  }

  private async load(name: AnyComponentName): Promise<OnnxModel> {
    const path = this.bundle.componentPath(name);
    const model = await OnnxModel.load(name, path, this.settingsFor(name), this.clock);
    const expected = this.bundle.manifest.components[name]?.inputs ?? [];
    const missing = expected.filter((n) => !model.inputNames.includes(n));
    if (missing.length > 0) {
      await model.release();
      throw new FarmError(
        "FAILED_PRECONDITION",
        `${name} graph lacks inputs ${missing.join(", ")} that the manifest promises: re-export the bundle`,
      );
    }
    return model;
  }

  /** Loads the named components now (a node warms the models of its stages at start). */
  async warm(names: readonly ComponentName[] = COMPONENT_NAMES): Promise<void> {
    await Promise.all(names.map((n) => this.model(n)));
  }

  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => undefined))?.release()));
  }
}
