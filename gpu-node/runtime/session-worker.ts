/**
 * onnxruntime sessions in a worker thread (OnnxModel with SessionSettings.sessionWorker): one
 * OnnxModel's, or every session of a SessionHost (session-host.ts), which feed each other tensors
 * kept here. onnxruntime-node's session.run is synchronous on the calling thread: on the node's own
 * thread a VAE tile blocks the event loop for its whole run, so a decode and the next section's
 * denoise take turns on the GPU instead of sharing it, and every store write or heartbeat waits.
 * Here sessions run off that thread; the node's thread posts feeds and gets outputs back.
 */
import { parentPort } from "node:worker_threads";
import ort from "onnxruntime-node";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { temporalTiledDecode, type SpatialTiling, type TemporalTiling } from "../../shared/framepack/vae-tiling.js";
import { DecodedTileCache } from "../../shared/framepack/decoded-tile-cache.js";

/** A feed's data (kept under `keep` for later runs when given), or a reference to a tensor kept here. */
export type WorkerFeed =
  { type: "float32" | "int64"; data: Float32Array | BigInt64Array; dims: number[]; keep?: number } | { kept: number };
/**
 * A whole tiled VAE decode (vae-tiling.ts) run here: the tiles, their blending and the copy into
 * one video stay on this thread, so the node's thread gets one finished video instead of every
 * tile (tens of MB each) and the blending work, which it would do between the other stages' steps.
 */
export interface TiledDecodeRequest {
  kind: "tiled-decode";
  id: number;
  session: number;
  latents: { data: Float32Array; dims: number[] };
  input: string;
  output: string;
  temporal: TemporalTiling;
  spatial?: SpatialTiling;
  /** Latent frames whose tiles a later decode may ask for (kept in this session's tile cache). */
  keep?: { first: number; count: number };
  /** This session's decoded-tile cache size (decoded-tile-cache.ts); 0: no cache. */
  tileCacheBytes: number;
  /** Post final frames as they are made ("frames"), and no video with the result. */
  stream: boolean;
}
/** Requests name their session; every one but "drop" is answered under its id. */
export type ToWorker =
  | {
      kind: "load";
      id: number;
      session: number;
      model: string | Uint8Array;
      options: ort.InferenceSession.SessionOptions;
    }
  | {
      kind: "run";
      id: number;
      session: number;
      feeds: Record<string, WorkerFeed>;
      /** Kept feeds no longer needed. */
      drop: number[];
      /** Outputs kept here under these ids instead of posted. */
      keep: Record<string, number>;
      /** Outputs not fetched at all (onnxruntime does not copy them to the host). */
      unused: string[];
    }
  | TiledDecodeRequest
  /** Releases the session; `drop`: its kept feeds. The tensors it kept stay (another session may take them). */
  | { kind: "release"; id: number; session: number; drop: number[] }
  /** Kept tensors released by the node's thread. */
  | { kind: "drop"; kept: number[] };
export type FromWorker =
  | { kind: "ready"; id: number; inputNames: string[]; outputNames: string[] }
  | { kind: "failed"; id: number; message: string }
  | {
      kind: "result";
      id: number;
      outputs: Record<string, { type: string; dims: number[]; data: unknown }>;
      /** The outputs kept here (ToWorker's `keep`). */
      kept?: Record<string, { type: string; dims: number[] }>;
      /** session.run's own time in the worker. */
      runMs: number;
      /** A tiled decode's tiles found in the tile cache instead of decoded. */
      reused?: number;
    }
  | { kind: "error"; id: number; message: string }
  /** Frames [from, from + n) of a streamed decode (data: [B, C, n, H, W]) whose video has `dims`. */
  | { kind: "frames"; id: number; from: number; dims: number[]; data: Float32Array }
  | { kind: "released"; id: number };

const port = parentPort!;
const post = (m: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

/** A loaded session and the VAE tiles its next decode may ask for again (decoded-tile-cache.ts). */
interface Loaded {
  session: ort.InferenceSession;
  tiles: DecodedTileCache | undefined;
}
const sessions = new Map<number, Loaded>();
// Tensors kept for the node's thread, by id: steady feeds (the same for a whole section, sent
// once, then named) and kept outputs; ids are unique across the sessions here.
const kept = new Map<number, ort.Tensor>();
// Requests one after another, in the order asked, whichever session they are for: the node's
// thread may ask for the next run before the last one is back (VAE tiles), and each run's time
// must be its own, not its wait.
let previous: Promise<void> = Promise.resolve();
/** Runs `work` after every request asked before; `work` answers its own failures. */
const inOrder = (work: () => Promise<void>): void => void (previous = previous.then(work));

const loaded = (session: number): Loaded => {
  const s = sessions.get(session);
  if (s === undefined) throw new Error(`session ${session} is not loaded in this worker`);
  return s;
};

const load = async (m: Extract<ToWorker, { kind: "load" }>): Promise<void> => {
  try {
    const session =
      typeof m.model === "string"
        ? await ort.InferenceSession.create(m.model, m.options)
        : await ort.InferenceSession.create(m.model, m.options);
    sessions.set(m.session, { session, tiles: undefined });
    post({ kind: "ready", id: m.id, inputNames: [...session.inputNames], outputNames: [...session.outputNames] });
  } catch (err) {
    post({ kind: "failed", id: m.id, message: (err as Error).message });
  }
};

/** Posts frames [from, upTo) of a streamed decode's video as a chunk of its own; returns upTo. */
const postFrames = (id: number, video: F32, from: number, upTo: number): number => {
  if (upTo <= from) return from;
  const [bs, c, total, h, w] = video.shape as [number, number, number, number, number];
  const frame = h * w;
  const n = upTo - from;
  const data = new Float32Array(bs * c * n * frame);
  for (let bc = 0; bc < bs * c; bc++)
    data.set(video.data.subarray((bc * total + from) * frame, (bc * total + upTo) * frame), bc * n * frame);
  post({ kind: "frames", id, from, dims: [...video.shape], data }, [data.buffer]);
  return upTo;
};

/** Decodes every tile on this thread, one after another, and posts the video (moved, not copied). */
const tiledDecode = async (m: TiledDecodeRequest): Promise<void> => {
  try {
    const s = loaded(m.session);
    let runMs = 0;
    const outputs = new Set<Float32Array>();
    const tiles = (s.tiles = DecodedTileCache.sized(s.tiles, m.tileCacheBytes));
    let posted = 0;
    const hitsBefore = tiles?.hits ?? 0;
    const video = await temporalTiledDecode(
      new Tensor("float32", m.latents.dims, m.latents.data),
      m.temporal,
      async (tile: F32): Promise<F32> => {
        const started = performance.now();
        const results = await s.session.run({ [m.input]: new ort.Tensor("float32", tile.data, [...tile.shape]) });
        runMs += performance.now() - started;
        const v = results[m.output] as ort.Tensor | undefined;
        if (v === undefined || v.type !== "float32") throw new Error(`output ${m.output} missing or not float32`);
        // Kept as the binding gave it until blended (a tiled decode copies each tile once).
        outputs.add(v.data as Float32Array);
        return new Tensor("float32", v.dims.map(Number), v.data as Float32Array);
      },
      m.spatial,
      {
        // One tile at a time: session.run blocks this thread, and each tile's time must be its own.
        tilesInFlight: 1,
        ...(tiles !== undefined ? { cache: tiles } : {}),
        ...(m.keep !== undefined ? { keep: m.keep } : {}),
        ...(m.stream ? { onFrames: (v: F32, upTo: number) => void (posted = postFrames(m.id, v, posted, upTo)) } : {}),
      },
    );
    const reused = (tiles?.hits ?? 0) - hitsBefore;
    if (m.stream) {
      post({ kind: "result", id: m.id, outputs: {}, runMs, reused });
      return;
    }
    // One tile's decode is the binding's own output: copied, as run() does, so that it can move.
    const data = outputs.has(video.data) ? video.data.slice() : video.data;
    post(
      {
        kind: "result",
        id: m.id,
        outputs: { [m.output]: { type: "float32", dims: [...video.shape], data } },
        runMs,
        reused,
      },
      [data.buffer as ArrayBuffer],
    );
  } catch (err) {
    post({ kind: "error", id: m.id, message: (err as Error).message });
  }
};

const run = async (m: Extract<ToWorker, { kind: "run" }>): Promise<void> => {
  try {
    const { session } = loaded(m.session);
    for (const id of m.drop) kept.delete(id);
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, f] of Object.entries(m.feeds)) {
      if ("kept" in f) {
        const t = kept.get(f.kept);
        if (t === undefined) throw new Error(`input ${name}: kept tensor ${f.kept} is gone`);
        feeds[name] = t;
        continue;
      }
      feeds[name] = new ort.Tensor(f.type, f.data, f.dims);
      if (f.keep !== undefined) kept.set(f.keep, feeds[name]);
    }
    const started = performance.now();
    const fetched = session.outputNames.filter((n) => !m.unused.includes(n));
    const results = await session.run(feeds, fetched);
    const runMs = performance.now() - started;
    const outputs: Record<string, { type: string; dims: number[]; data: unknown }> = {};
    const keptOutputs: Record<string, { type: string; dims: number[] }> = {};
    const transfer: ArrayBuffer[] = [];
    for (const name of fetched) {
      const v = results[name] as ort.Tensor;
      const keepAs = m.keep[name];
      if (keepAs !== undefined) {
        kept.set(keepAs, v);
        keptOutputs[name] = { type: v.type, dims: v.dims.map(Number) };
        continue;
      }
      const data = v.data as Float32Array;
      outputs[name] = { type: v.type, dims: v.dims.map(Number), data };
      // An output that is its buffer's whole content moves as it is (no copy of a 238 MB
      // tensor); a view into a larger buffer is copied, so nothing else moves with it.
      if (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength)
        transfer.push(data.buffer as ArrayBuffer);
      else {
        const own = data.slice();
        outputs[name].data = own;
        transfer.push(own.buffer);
      }
    }
    try {
      post({ kind: "result", id: m.id, outputs, kept: keptOutputs, runMs }, transfer);
    } catch {
      // A buffer the binding does not let go of (DataCloneError, nothing sent): copies move.
      for (const o of Object.values(outputs)) o.data = (o.data as Float32Array).slice();
      post(
        { kind: "result", id: m.id, outputs, kept: keptOutputs, runMs },
        Object.values(outputs).map((o) => (o.data as Float32Array).buffer as ArrayBuffer),
      );
    }
  } catch (err) {
    post({ kind: "error", id: m.id, message: (err as Error).message });
  }
};

const release = async (m: Extract<ToWorker, { kind: "release" }>): Promise<void> => {
  for (const id of m.drop) kept.delete(id);
  const s = sessions.get(m.session);
  sessions.delete(m.session);
  // Answered even when onnxruntime fails: the node's thread ends the worker after its last session.
  await s?.session.release().catch(() => undefined);
  post({ kind: "released", id: m.id });
};

port.on("message", (m: ToWorker) => {
  switch (m.kind) {
    case "load":
      return inOrder(() => load(m));
    case "run":
      return inOrder(() => run(m));
    case "tiled-decode":
      return inOrder(() => tiledDecode(m));
    case "release":
      return inOrder(() => release(m));
    case "drop":
      return inOrder(async () => {
        for (const id of m.kept) kept.delete(id);
      });
  }
});
