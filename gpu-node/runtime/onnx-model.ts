/**
 * One ONNX graph with named float32/int64 inputs and float32 outputs (the bundle's I/O contract),
 * and outputs of any type left where the session ran, to feed to another (KeptTensor).
 * Converts between framefarm Tensors and onnxruntime tensors and checks names, so a bundle whose
 * graph does not match its manifest fails with the component and the name, not a native error.
 */
import ort from "onnxruntime-node";
import { FarmError } from "../../shared/errors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { ExecutionProvider } from "./execution-provider.js";
import { chunkedAttentionModel } from "./chunked-attention.js";
import { KeptTensor, type KeptPlace } from "./kept-tensor.js";
import { SessionHost } from "./session-host.js";
import { temporalTiledDecode, type SpatialTiling, type TemporalTiling } from "../../shared/framepack/vae-tiling.js";
import { DecodedTileCache } from "../../shared/framepack/decoded-tile-cache.js";

export type Feed = Tensor<"float32"> | Tensor<"int64">;
/** A run's inputs by name: tensors from here, or tensors kept where the session runs. */
export type Feeds = Readonly<Record<string, Feed | KeptTensor>>;
export type { KeptTensor } from "./kept-tensor.js";

export interface SessionSettings {
  ep: ExecutionProvider;
  /** Threads for one operator on the CPU provider; 0 lets onnxruntime decide. */
  intraOpThreads?: number;
  /** Graph rewrites before running (fusions can produce kernels an execution provider lacks). */
  graphOptimization?: "disabled" | "basic" | "extended" | "all";
  /** Options for the execution provider itself (e.g. WebGPU's storageBufferCacheMode); cpu ignores them. */
  providerOptions?: Readonly<Record<string, string>>;
  /**
   * On a GPU provider, refuse to create a session that places any node on the CPU
   * (session.disable_cpu_ep_fallback; FRAMEFARM_STRICT_PLACEMENT=1). Off by default: onnxruntime
   * always places a dynamic-shape graph's shape arithmetic (Shape -> Gather -> Concat on int64) on
   * the CPU on purpose, so on an H200 every graph of a real bundle was refused with it on. Kept for
   * graphs with static shapes and for checking an export.
   */
  strictPlacement?: boolean;
  /**
   * Runs the graph's masked attention (MatMul, Softmax, MatMul) in blocks of query rows whose
   * scores take at most this many bytes, bit-identically (see chunked-attention.ts); unset runs
   * the graph as exported.
   */
  attentionBlockBytes?: number;
  /**
   * onnxruntime's CPU memory arena (default on). An arena keeps the high-water mark of every
   * session that has ever run, so a process holding several sessions holds the sum of their peaks.
   */
  cpuMemArena?: boolean;
  /**
   * Run the session on a worker thread of its own (session-worker.ts): onnxruntime-node runs a
   * graph synchronously on the calling thread, so on the node's thread one stage's run blocks
   * every other stage and all I/O until it ends.
   */
  sessionWorker?: boolean;
  /**
   * With sessionWorker: run the session on this host's worker, shared with the host's other
   * sessions, which take the tensors it keeps (and it theirs). Ignored on this thread, where every
   * session takes every other's.
   */
  host?: SessionHost;
}

/** The provider list and session config entries for one session. */
export function sessionProviders(settings: SessionSettings): {
  providers: (string | Record<string, string>)[];
  config: Record<string, string>;
} {
  const main =
    settings.providerOptions === undefined ? settings.ep : { ...settings.providerOptions, name: settings.ep };
  if (settings.ep === "cpu") return { providers: ["cpu"], config: {} };
  // onnxruntime rejects disable_cpu_ep_fallback when the CPU provider is listed explicitly.
  const strict = settings.ep === "cuda" && (settings.strictPlacement ?? process.env.FRAMEFARM_STRICT_PLACEMENT === "1");
  // On CUDA the weights go straight to the device allocator instead of the session's arena, which
  // grows in powers of two and never shrinks: a 26 GB full-depth transformer would round up to 32.
  const config: Record<string, string> =
    settings.ep === "cuda" ? { "session.use_device_allocator_for_initializers": "1" } : {};
  return strict
    ? { providers: [main], config: { ...config, "session.disable_cpu_ep_fallback": "1" } }
    : { providers: [main, "cpu"], config };
}

function toOrt(t: Feed): ort.Tensor {
  return t.is("int64")
    ? new ort.Tensor("int64", t.data, [...t.shape])
    : new ort.Tensor("float32", t.data as Float32Array, [...t.shape]);
}

/** Milliseconds spent inside onnxruntime, accumulated per runtime (farm-overhead accounting). */
export interface ModelClock {
  ms: number;
}

/** Where a session runs: on this thread, or on a SessionHost's worker thread. */
export interface SessionRunner {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Where its kept outputs live, and the kept tensors it can be fed. */
  readonly place: KeptPlace;
  /**
   * steady: names whose feeds the caller never changes in place (see OnnxModel.run); keep: outputs
   * left where the session runs, as `kept` instead of `outputs`; unused: outputs not fetched.
   */
  run(
    feeds: Feeds,
    steady: ReadonlySet<string> | undefined,
    keep: readonly string[],
    unused: readonly string[],
  ): Promise<RunnerResult>;
  /**
   * A whole tiled VAE decode where the session runs (a worker); absent: the caller tiles with
   * run(). With `onChunk`, the video comes back in chunks of final frames as the tiles finish
   * (the result then holds no video).
   */
  tiledDecode?(request: TiledDecode, onChunk?: (chunk: DecodedChunk) => void): Promise<RunnerResult>;
  release(): Promise<void>;
}

/** What OnnxModel.tiledDecode decodes: latents through the graph's input into its output, in tiles. */
export interface TiledDecode {
  latents: F32;
  input: string;
  output: string;
  temporal: TemporalTiling;
  spatial: SpatialTiling | undefined;
  /** Latent frames whose tiles a later decode may ask for, and the session's tile cache size (0: off). */
  keep?: { first: number; count: number };
  tileCacheBytes?: number;
  /** Frames [0, upTo) of `video` are final (vae-tiling.ts TiledDecodeOptions.onFrames). */
  onFrames?: (video: F32, upTo: number) => void;
  /** With onFrames: the video's memory, given by the caller (else made here). */
  into?: F32;
}

/** Frames [from, from + data's frame count) of a streamed decode whose whole video has `dims`. */
export interface DecodedChunk {
  from: number;
  dims: number[];
  data: Float32Array;
}

export interface RunnerResult {
  outputs: Record<string, { type: string; dims: readonly number[]; data: unknown }>;
  kept: Record<string, KeptTensor>;
  /** session.run alone, where it ran (a worker's figure leaves out the trip to and from it). */
  runMs: number;
  /** A tiled decode's tiles taken from the tile cache. */
  reused?: number;
}

/** The tensors kept by sessions on this thread, which any session here can be fed. */
class ThisThread implements KeptPlace {
  readonly name = "this thread";
  private readonly tensors = new WeakMap<KeptTensor, ort.Tensor>();

  keep(t: ort.Tensor): KeptTensor {
    const kept = new KeptTensor(t.type, t.dims.map(Number), this);
    this.tensors.set(kept, t);
    return kept;
  }

  tensor(kept: KeptTensor): ort.Tensor | undefined {
    return this.tensors.get(kept);
  }

  has(kept: KeptTensor): boolean {
    return this.tensors.has(kept);
  }

  // Not disposed: a run already asked for reads it later (session.run starts on setImmediate);
  // unreferenced, it is collected.
  free(kept: KeptTensor): void {
    this.tensors.delete(kept);
  }
}

const thisThread = new ThisThread();

function inThread(session: ort.InferenceSession): SessionRunner {
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    place: thisThread,
    async run(feeds, _steady, keep, unused) {
      const ortFeeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(feeds)) {
        const tensor = t instanceof KeptTensor ? thisThread.tensor(t) : toOrt(t);
        if (tensor === undefined) throw new Error(`input ${name}: the kept tensor was released`);
        ortFeeds[name] = tensor;
      }
      const started = performance.now();
      const fetched = session.outputNames.filter((n) => !unused.includes(n));
      const results = await session.run(ortFeeds, fetched);
      const runMs = performance.now() - started;
      const outputs: RunnerResult["outputs"] = {};
      const kept: Record<string, KeptTensor> = {};
      for (const n of fetched) {
        const v = results[n] as ort.Tensor | undefined;
        if (v === undefined) continue;
        if (keep.includes(n)) kept[n] = thisThread.keep(v);
        else outputs[n] = { type: v.type, dims: v.dims.map(Number), data: v.data };
      }
      return { outputs, kept, runMs };
    },
    release: () => session.release(),
  };
}

export class OnnxModel {
  /** Runs in progress, and what release waits for: a session is never released under a run. */
  private running = 0;
  private idle: (() => void)[] = [];
  private released = false;
  private releasing: Promise<void> | undefined;

  private constructor(
    readonly component: string,
    private readonly session: SessionRunner,
    private readonly clock: ModelClock,
  ) {}

  static async load(
    component: string,
    file: string,
    settings: SessionSettings,
    clock: ModelClock = { ms: 0 },
  ): Promise<OnnxModel> {
    const { providers, config } = sessionProviders(settings);
    try {
      const options: ort.InferenceSession.SessionOptions = {
        executionProviders: providers as ort.InferenceSession.ExecutionProviderConfig[],
        graphOptimizationLevel: settings.graphOptimization ?? "all",
        intraOpNumThreads: settings.intraOpThreads ?? 0,
        logSeverityLevel: 3,
        ...(settings.cpuMemArena !== undefined ? { enableCpuMemArena: settings.cpuMemArena } : {}),
        extra: {
          session: Object.fromEntries(Object.entries(config).map(([k, v]) => [k.replace(/^session\./, ""), v])),
        },
      };
      const model =
        settings.attentionBlockBytes === undefined
          ? file
          : await chunkedAttentionModel(file, settings.attentionBlockBytes);
      if (settings.sessionWorker === true)
        return new OnnxModel(component, await (settings.host ?? new SessionHost()).open(model, options), clock);
      const session =
        typeof model === "string"
          ? await ort.InferenceSession.create(model, options)
          : await ort.InferenceSession.create(model, options);
      return new OnnxModel(component, inThread(session), clock);
    } catch (err) {
      const message = (err as Error).message;
      const hint = /fallback to CPU EP has been explicitly disabled/.test(message)
        ? ` (${settings.ep} placed a node of this graph on the CPU; onnxruntime places dynamic-shape arithmetic there on purpose: unset FRAMEFARM_STRICT_PLACEMENT)`
        : "";
      throw new FarmError(
        "FAILED_PRECONDITION",
        `cannot load ${component} from ${file} on ${settings.ep}: ${message}${hint}`,
        { cause: err },
      );
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /**
   * Runs the graph. `steady` names inputs whose feed objects the caller never changes in place
   * (a section's conditioning, the same objects every step): a session on a worker thread gets
   * such a feed's data once and is told "the same as before" while the same object comes again,
   * instead of ~20 MB copied and posted on every transformer step. A feed may be a KeptTensor
   * (see runTimed) kept where this session runs.
   */
  async run(feeds: Feeds, steady?: ReadonlySet<string>): Promise<Record<string, F32>> {
    return (await this.runTimed(feeds, steady)).outputs;
  }

  /**
   * run(), with how long onnxruntime's session.run took (the rest of the wait is queueing and
   * transfer). Outputs named in `keep`, of any type, stay where the session runs, as `kept`
   * instead of `outputs`, for feeding to a session that runs there (the caller releases them).
   * Outputs named in `unused` are not fetched: on a GPU they are never copied to the host.
   */
  async runTimed(
    feeds: Feeds,
    steady?: ReadonlySet<string>,
    options?: { keep?: readonly string[]; unused?: readonly string[] },
  ): Promise<{ outputs: Record<string, F32>; kept: Record<string, KeptTensor>; runMs: number }> {
    const keep = options?.keep ?? [];
    const unused = options?.unused ?? [];
    const missing = [...keep, ...unused].find((n) => !this.session.outputNames.includes(n));
    if (missing !== undefined)
      throw new FarmError(
        "INTERNAL",
        `${this.component} has no output ${missing} to ${keep.includes(missing) ? "keep" : "leave unfetched"}`,
      );
    if (unused.length === this.session.outputNames.length)
      throw new FarmError("INTERNAL", `${this.component}: a run must fetch at least one output`);
    const inputs: Record<string, Feed | KeptTensor> = {};
    for (const name of this.session.inputNames) {
      const t = feeds[name];
      if (t === undefined) throw new FarmError("INTERNAL", `${this.component}: input ${name} was not provided`);
      if (t instanceof KeptTensor) this.assertTakes(name, t);
      inputs[name] = t;
    }
    const ran = await this.tracked(
      () =>
        `failed on ${Object.entries(feeds)
          .map(([k, v]) => `${k}=${v.describe()}`)
          .join(" ")}`,
      () => this.session.run(inputs, steady, keep, unused),
    );
    const out: Record<string, F32> = {};
    for (const name of this.session.outputNames) {
      if (keep.includes(name) || unused.includes(name)) continue;
      const v = ran.outputs[name];
      if (v === undefined || v.type !== "float32") {
        // Nobody else gets them to release.
        for (const k of Object.values(ran.kept)) k.release();
        throw new FarmError("INTERNAL", `${this.component}: output ${name} missing or not float32`);
      }
      out[name] = new Tensor("float32", [...v.dims], v.data as Float32Array);
    }
    return { outputs: out, kept: ran.kept, runMs: ran.runMs };
  }

  /** A kept tensor fed to `input` must be held still, where this session runs. */
  private assertTakes(input: string, t: KeptTensor): void {
    if (!t.place.has(t))
      throw new FarmError("INTERNAL", `${this.component}: input ${input} is a kept tensor that was released`);
    if (t.place !== this.session.place)
      throw new FarmError(
        "INTERNAL",
        `${this.component}: input ${input} was kept on ${t.place.name}, and this session runs on ${this.session.place.name}`,
      );
  }

  /**
   * A VAE decode in temporal (and, given `spatial`, spatial) tiles, exactly as vae-tiling.ts tiles
   * and blends: on a session worker the whole decode runs there and one finished video comes back;
   * otherwise each tile is a run() from here. runMs sums session.run over the tiles.
   */
  async tiledDecode(request: TiledDecode): Promise<{ video: F32; runMs: number; reused: number }> {
    const { latents, input, output, temporal, spatial, keep, tileCacheBytes, onFrames, into } = request;
    for (const [what, name, names] of [
      ["input", input, this.session.inputNames],
      ["output", output, this.session.outputNames],
    ] as const)
      if (!names.includes(name)) throw new FarmError("INTERNAL", `${this.component} has no ${what} ${name}`);
    if (this.session.tiledDecode === undefined) {
      let runMs = 0;
      const cache = (this.decodedTiles = DecodedTileCache.sized(this.decodedTiles, tileCacheBytes));
      const hitsBefore = cache?.hits ?? 0;
      const video = await temporalTiledDecode(
        latents,
        temporal,
        async (tile) => {
          const r = await this.runTimed({ [input]: tile });
          runMs += r.runMs;
          return r.outputs[output]!;
        },
        spatial,
        {
          // session.run blocks this thread: a second tile in flight would only wait, and count twice.
          tilesInFlight: 1,
          ...(cache !== undefined ? { cache } : {}),
          ...(keep !== undefined ? { keep } : {}),
          ...(onFrames !== undefined ? { onFrames } : {}),
          ...(into !== undefined ? { into } : {}),
        },
      );
      return { video, runMs, reused: (cache?.hits ?? 0) - hitsBefore };
    }
    const decode = this.session.tiledDecode.bind(this.session);
    // A streamed decode's chunks are gathered here into one video, which the caller watches fill.
    let streamed: F32 | undefined = into;
    const onChunk =
      onFrames === undefined
        ? undefined
        : (chunk: DecodedChunk): void => {
            streamed ??= new Tensor("float32", chunk.dims, new Float32Array(chunk.dims.reduce((a, b) => a * b, 1)));
            if (streamed.shape.join() !== chunk.dims.join())
              throw new FarmError(
                "INTERNAL",
                `${this.component}: a decode into ${streamed.describe()} gave [${chunk.dims.join(", ")}]`,
              );
            const [bs, c, total, h, w] = chunk.dims as [number, number, number, number, number];
            const frame = h * w;
            const n = chunk.data.length / (bs * c * frame);
            for (let bc = 0; bc < bs * c; bc++)
              streamed.data.set(
                chunk.data.subarray(bc * n * frame, (bc + 1) * n * frame),
                (bc * total + chunk.from) * frame,
              );
            onFrames(streamed, chunk.from + n);
          };
    const result = await this.tracked(
      () => `failed decoding ${latents.describe()}`,
      () => decode(request, onChunk),
    );
    if (onChunk !== undefined) {
      if (streamed === undefined)
        throw new FarmError("INTERNAL", `${this.component}: a streamed decode gave no frames`);
      return { video: streamed, runMs: result.runMs, reused: result.reused ?? 0 };
    }
    const v = result.outputs[output];
    if (v === undefined || v.type !== "float32")
      throw new FarmError("INTERNAL", `${this.component}: output ${output} missing or not float32`);
    return {
      video: new Tensor("float32", [...v.dims], v.data as Float32Array),
      runMs: result.runMs,
      reused: result.reused ?? 0,
    };
  }

  /** This session's decoded tiles kept for the next decode (decoded-tile-cache.ts), made on first use. */
  private decodedTiles: DecodedTileCache | undefined;

  /**
   * One call into the session: refused once released, counted as running (release waits for it),
   * its time added to the clock, and a failure named with the component and `failure()`.
   */
  private async tracked<T>(failure: () => string, call: () => Promise<T>): Promise<T> {
    if (this.released) throw new FarmError("UNAVAILABLE", `${this.component}: the session was released; try again`);
    const started = performance.now();
    this.running++;
    try {
      const result = await call();
      this.clock.ms += performance.now() - started;
      return result;
    } catch (err) {
      throw new FarmError("INTERNAL", `${this.component} ${failure()}: ${(err as Error).message}`, { cause: err });
    } finally {
      if (--this.running === 0) for (const wake of this.idle.splice(0)) wake();
    }
  }

  /** Releases the session once the runs in progress end; runs after this are UNAVAILABLE. */
  release(): Promise<void> {
    this.released = true;
    this.releasing ??= (async () => {
      if (this.running > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
      await this.session.release();
    })();
    return this.releasing;
  }
}
