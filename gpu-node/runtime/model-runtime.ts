/**
 * The ONNX sessions of one bundle on one execution provider. Sessions are created on first use and
 * kept warm: a node that serves only denoise never loads the text encoders.
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, rm, stat, utimes } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import {
  COMPONENT_NAMES,
  STEP_CACHE_COMPONENT_NAMES,
  TRANSFORMER_GRAPH_NAMES,
  type AnyComponentName,
  type ComponentName,
} from "../../shared/bundle/manifest.js";
import { loraLabel, type LoraRef } from "../../shared/job/loras.js";
import { loraTargetsOf, parseLora } from "../../shared/lora/lora-file.js";
import type { Bundle } from "./bundle.js";
import { bundleDigest } from "./bundle-digest.js";
import { writeFusedGraph, type WeightedLora } from "./lora-fusion.js";
import { assertExecutionProviderAvailable } from "./execution-provider.js";
import { OnnxModel, type ModelClock, type SessionSettings } from "./onnx-model.js";
import { SessionHost } from "./session-host.js";

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
const CPU_ARENA_COMPONENTS: ReadonlySet<AnyComponentName> = new Set(TRANSFORMER_GRAPH_NAMES);

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

/** The transformer and the step caches' graphs made from it: the graphs a job's LoRAs are fused into. */
const TRANSFORMER_GRAPHS: ReadonlySet<AnyComponentName> = new Set(TRANSFORMER_GRAPH_NAMES);

/**
 * The step caches' graphs (step-cache-graphs.ts): on session workers they share one worker thread
 * per weight set, so that the residual one keeps is fed to the other there (session-host.ts).
 */
const STEP_CACHE_GRAPHS: ReadonlySet<AnyComponentName> = new Set(STEP_CACHE_COMPONENT_NAMES);

/** Reads a job's LoRA file (a node: from the farm's store); the runtime checks its SHA-256. */
export type LoraSource = (ref: LoraRef, index: number) => Promise<Uint8Array>;

/** Where fused transformer variants are kept on disk, how much of it, and how many live at once. */
export interface LoraVariantSettings {
  /** Folder of fused variants (one subfolder per bundle digest + LoRAs + weights). */
  cacheDir: string;
  /** Bytes of fused variants kept on disk; the least recently used go first (never one in use). */
  cacheBytes: number;
  /**
   * Transformer weight sets held in sessions at once, the bundle's own (no LoRA) counting as one:
   * a job whose set is not live releases the least recently used one first, so a GPU holds at most
   * this many copies of the transformer's weights.
   */
  liveVariants: number;
}

/** FRAMEFARM_LORA_CACHE_DIR, FRAMEFARM_LORA_CACHE_MB (32768) and FRAMEFARM_TRANSFORMER_VARIANTS (1). */
export function loraVariantSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): LoraVariantSettings {
  const int = (name: string, fallback: number, min: number): number => {
    const v = env[name];
    if (v === undefined || v === "") return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new RangeError(`${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  return {
    cacheDir:
      env["FRAMEFARM_LORA_CACHE_DIR"] ||
      path.join(os.tmpdir(), `framefarm-lora-${typeof process.getuid === "function" ? process.getuid() : 0}`),
    cacheBytes: int("FRAMEFARM_LORA_CACHE_MB", 32768, 0) * 2 ** 20,
    liveVariants: int("FRAMEFARM_TRANSFORMER_VARIANTS", 1, 1),
  };
}

/** One transformer weight set: the bundle's own (key "") or the bundle with a set of LoRAs. */
interface Variant {
  key: string;
  sessions: Map<AnyComponentName, Promise<OnnxModel>>;
  lastUsed: number;
  /** The LoRAs, parsed when a graph is first built (a variant found on disk never reads them). */
  loras?: () => Promise<WeightedLora[]>;
  /** The worker thread its step-cache graphs share (made on first use). */
  stepCacheHost?: SessionHost;
}

export class ModelRuntime {
  private readonly sessions = new Map<AnyComponentName, Promise<OnnxModel>>();
  private readonly variants = new Map<string, Variant>();
  private tick = 0;
  /** Time spent inside onnxruntime by every session of this runtime. */
  readonly clock: ModelClock = { ms: 0 };
  readonly loraSettings: LoraVariantSettings;

  constructor(
    readonly bundle: Bundle,
    readonly settings: SessionSettings,
    loraSettings?: LoraVariantSettings,
  ) {
    assertExecutionProviderAvailable(settings.ep);
    this.loraSettings = loraSettings ?? loraVariantSettingsFromEnv();
  }

  model(name: AnyComponentName): Promise<OnnxModel> {
    if (TRANSFORMER_GRAPHS.has(name)) return this.variantModel("", name);
    return this.baseModel(name);
  }

  /**
   * This runtime with the transformer's graphs replaced by ones with these LoRAs fused in (the
   * same object when there are none). The fused graphs are built on first use, from the files
   * `source` gives (checked against their SHA-256 and the bundle's LoRA targets), and kept on disk
   * for later jobs with the same bundle, LoRAs and weights; their sessions count towards
   * liveVariants.
   */
  async withLoras(refs: readonly LoraRef[], source: LoraSource): Promise<ModelRuntime> {
    if (refs.length === 0) return this;
    const targets = loraTargetsOf(this.bundle.manifest);
    const digest = await bundleDigest(this.bundle);
    const key = createHash("sha256")
      .update(JSON.stringify({ bundle: digest, loras: refs.map((r) => [r.sha256, r.weight]) }))
      .digest("hex")
      .slice(0, 32);
    const tr = this.bundle.manifest.transformer;
    const hidden = tr.num_attention_heads * tr.attention_head_dim;
    let parsed: Promise<WeightedLora[]> | undefined;
    const loras = (): Promise<WeightedLora[]> => {
      parsed ??= Promise.all(
        refs.map(async (ref, i) => {
          const bytes = await source(ref, i);
          const got = createHash("sha256").update(bytes).digest("hex");
          if (got !== ref.sha256)
            throw new FarmError(
              "DATA_LOSS",
              `${loraLabel(i, ref.name)}: the file read has SHA-256 ${got}, not ${ref.sha256}`,
            );
          return { pairs: parseLora(bytes, targets, hidden, loraLabel(i, ref.name)).pairs, weight: ref.weight };
        }),
      );
      parsed.catch(() => (parsed = undefined));
      return parsed;
    };
    const v = this.variants.get(key);
    if (v === undefined) this.variants.set(key, { key, sessions: new Map(), lastUsed: 0, loras });
    else v.loras = loras;
    const view = Object.create(this) as ModelRuntime;
    view.model = (name: AnyComponentName): Promise<OnnxModel> =>
      TRANSFORMER_GRAPHS.has(name) ? this.variantModel(key, name) : this.baseModel(name);
    return view;
  }

  /** Keys of the transformer variants holding sessions now (the bundle's own is ""). */
  liveVariantKeys(): string[] {
    return [...this.variants.values()].filter((v) => v.sessions.size > 0).map((v) => v.key);
  }

  private variantModel(key: string, name: AnyComponentName): Promise<OnnxModel> {
    let v = this.variants.get(key);
    if (v === undefined) {
      v = { key, sessions: new Map(), lastUsed: 0 };
      this.variants.set(key, v);
    }
    v.lastUsed = ++this.tick;
    let pending = v.sessions.get(name);
    if (pending === undefined) {
      const variant = v;
      const host = STEP_CACHE_GRAPHS.has(name) ? (variant.stepCacheHost ??= new SessionHost()) : undefined;
      pending = this.releaseOtherVariants(key).then(() =>
        key === "" ? this.load(name, undefined, host) : this.loadVariant(variant, name, host),
      );
      v.sessions.set(name, pending);
      pending.catch(() => variant.sessions.delete(name));
    }
    return pending;
  }

  /** Releases the least recently used other variants until this one fits in liveVariants. */
  private async releaseOtherVariants(key: string): Promise<void> {
    const others = [...this.variants.values()]
      .filter((v) => v.key !== key && v.sessions.size > 0)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    while (others.length > this.loraSettings.liveVariants - 1) {
      const v = others.shift()!;
      const sessions = [...v.sessions.values()];
      v.sessions.clear();
      await Promise.all(sessions.map(async (p) => (await p.catch(() => undefined))?.release()));
    }
  }

  private async loadVariant(v: Variant, name: AnyComponentName, host?: SessionHost): Promise<OnnxModel> {
    const entry = this.bundle.manifest.components[name];
    if (entry === undefined) return this.load(name, undefined, host);
    const dir = path.join(this.loraSettings.cacheDir, v.key);
    const file = path.join(dir, path.basename(entry.file));
    const built = await stat(file).then(
      () => true,
      () => false,
    );
    if (!built) {
      if (v.loras === undefined)
        throw new FarmError("INTERNAL", `transformer variant ${v.key} has no LoRAs to build from`);
      const loras = await v.loras();
      await writeFusedGraph(this.bundle.dir, entry.file, dir, loraTargetsOf(this.bundle.manifest), loras);
    }
    const now = new Date();
    await utimes(dir, now, now).catch(() => undefined);
    if (!built) await this.pruneVariantCache(v.key);
    return this.load(name, file, host);
  }

  /** Removes the least recently used variant folders beyond cacheBytes, never a live one. */
  private async pruneVariantCache(keep: string): Promise<void> {
    const root = this.loraSettings.cacheDir;
    await mkdir(root, { recursive: true });
    const live = new Set(this.liveVariantKeys());
    const dirs: { key: string; mtime: number; bytes: number }[] = [];
    for (const key of await readdir(root)) {
      const dir = path.join(root, key);
      const s = await stat(dir).catch(() => undefined);
      if (s === undefined || !s.isDirectory()) continue;
      let bytes = 0;
      for (const f of await readdir(dir).catch(() => [] as string[]))
        bytes += (await stat(path.join(dir, f)).catch(() => undefined))?.size ?? 0;
      dirs.push({ key, mtime: s.mtimeMs, bytes });
    }
    let total = dirs.reduce((n, d) => n + d.bytes, 0);
    for (const d of dirs.sort((a, b) => a.mtime - b.mtime)) {
      if (total <= this.loraSettings.cacheBytes) break;
      if (d.key === keep || live.has(d.key)) continue;
      await rm(path.join(root, d.key), { recursive: true, force: true });
      total -= d.bytes;
    }
  }

  private baseModel(name: AnyComponentName): Promise<OnnxModel> {
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

  /** `host`: the worker thread to open the session on, when sessions run on workers (else its own). */
  private async load(
    name: AnyComponentName,
    file = this.bundle.componentPath(name),
    host?: SessionHost,
  ): Promise<OnnxModel> {
    const settings = this.settingsFor(name);
    const model = await OnnxModel.load(name, file, host === undefined ? settings : { ...settings, host }, this.clock);
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
    const all = [...this.sessions.values(), ...[...this.variants.values()].flatMap((v) => [...v.sessions.values()])];
    this.sessions.clear();
    for (const v of this.variants.values()) v.sessions.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => undefined))?.release()));
  }
}
