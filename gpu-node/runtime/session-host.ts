/**
 * One worker thread (session-worker.ts) that holds the sessions of several OnnxModels
 * (SessionSettings.host): a tensor one of them keeps (OnnxModel.runTimed's `keep`) is fed to any
 * other from there, never posted to the node's thread. A session without a host gets one of its own.
 */
import { Worker } from "node:worker_threads";
import type ort from "onnxruntime-node";
import { KeptTensor, type KeptPlace } from "./kept-tensor.js";
import type { DecodedChunk, Feed, RunnerResult, SessionRunner } from "./onnx-model.js";
import type { FromWorker, ToWorker, WorkerFeed } from "./session-worker.js";

/** A feed's elements in a buffer of their own (a view's whole buffer would be copied to the worker). */
function ownedCopy(t: Feed): { type: "float32" | "int64"; data: Float32Array | BigInt64Array; dims: number[] } {
  return t.is("int64")
    ? { type: "int64", data: (t.data as BigInt64Array).slice(), dims: [...t.shape] }
    : { type: "float32", data: (t.data as Float32Array).slice(), dims: [...t.shape] };
}

/** Steady feeds a worker keeps per input name and session: a prompt and a negative prompt alternate. */
const KEPT_PER_INPUT = 2;

let hostsMade = 0;

export class SessionHost {
  /** For errors that name where a kept tensor lives. */
  readonly name = `session host ${++hostsMade}`;
  private worker: HostWorker | undefined;

  /** A session on this host's worker; a worker starts for the first session and ends with the last. */
  open(model: string | Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<SessionRunner> {
    if (this.worker === undefined || this.worker.ended) this.worker = new HostWorker(`${this.name}'s worker`);
    return this.worker.open(model, options);
  }
}

/** One worker's lifetime: its sessions, its requests in flight, and the tensors it keeps. */
class HostWorker implements KeptPlace {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (m: FromWorker) => void; reject: (e: Error) => void }>();
  // Chunks of a streamed decode, by request id.
  private readonly chunkTo = new Map<number, (chunk: DecodedChunk) => void>();
  // The ids the worker keeps kept tensors under (dropped here when released).
  private readonly keptIds = new WeakMap<KeptTensor, number>();
  private nextId = 0;
  /** Ids of tensors the worker keeps, steady feeds and outputs, unique across its sessions. */
  private nextKeep = 0;
  private nextSession = 0;
  /** Sessions open or being opened: the worker ends when this comes back to 0. */
  private sessions = 0;
  private exited: Error | undefined;
  private ending = false;

  constructor(readonly name: string) {
    this.worker = new Worker(new URL("./session-worker.js", import.meta.url));
    this.worker.on("message", (m: FromWorker) => {
      if (m.kind === "frames") {
        this.chunkTo.get(m.id)?.({ from: m.from, dims: m.dims, data: m.data });
        return;
      }
      this.chunkTo.delete(m.id);
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.kind === "error" || m.kind === "failed") p?.reject(new Error(m.message));
      else p?.resolve(m);
    });
    this.worker.on("error", (err) => this.failAll(err));
    this.worker.on("exit", (code) => this.failAll(new Error(`the session worker exited (${code})`)));
  }

  /** Ending or ended: a later session needs a new worker, and the tensors kept here are gone. */
  get ended(): boolean {
    return this.ending || this.exited !== undefined;
  }

  has(kept: KeptTensor): boolean {
    return !this.ended && this.keptIds.has(kept);
  }

  free(kept: KeptTensor): void {
    const id = this.keptIds.get(kept);
    if (id === undefined) return;
    this.keptIds.delete(kept);
    if (!this.ended) this.worker.postMessage({ kind: "drop", kept: [id] } satisfies ToWorker);
  }

  async open(model: string | Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<SessionRunner> {
    const session = this.nextSession++;
    this.sessions++;
    try {
      const ready = await this.ask({ kind: "load", id: this.nextId++, session, model, options });
      if (ready.kind !== "ready") throw new Error(`unexpected ${ready.kind} from the session worker`);
      return this.runner(session, ready.inputNames, ready.outputNames);
    } catch (err) {
      await this.closed();
      throw err;
    }
  }

  private failAll(err: Error): void {
    this.exited = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** Posts a request and waits for its answer. */
  private ask(request: Exclude<ToWorker, { kind: "drop" }>, transfer: ArrayBuffer[] = []): Promise<FromWorker> {
    if (this.exited !== undefined) return Promise.reject(this.exited);
    const reply = new Promise<FromWorker>((resolve, reject) => this.pending.set(request.id, { resolve, reject }));
    this.worker.postMessage(request, transfer);
    return reply;
  }

  /** One session fewer; the last one ends the worker. */
  private async closed(): Promise<void> {
    if (--this.sessions > 0) return;
    this.ending = true;
    await this.worker.terminate();
  }

  /** A run's or a decode's result, with the outputs it kept (asked for under `keep`) as handles. */
  private result(m: FromWorker, keep: Record<string, number> = {}): RunnerResult {
    if (m.kind !== "result") return { outputs: {}, kept: {}, runMs: 0 };
    const kept: Record<string, KeptTensor> = {};
    for (const [name, { type, dims }] of Object.entries(m.kept ?? {})) {
      kept[name] = new KeptTensor(type, dims, this);
      this.keptIds.set(kept[name], keep[name]!);
    }
    return { outputs: m.outputs, kept, runMs: m.runMs, reused: m.reused ?? 0 };
  }

  private runner(session: number, inputNames: string[], outputNames: string[]): SessionRunner {
    // Steady feeds the worker holds for this session, per input name, oldest first (the objects
    // they were sent from).
    const steadyKept = new Map<string, { feed: Feed; id: number }[]>();
    return {
      inputNames,
      outputNames,
      place: this,
      run: async (feeds, steady, keep, unused) => {
        const sent: Record<string, WorkerFeed> = {};
        const transfer: ArrayBuffer[] = [];
        const drop: number[] = [];
        for (const [name, t] of Object.entries(feeds)) {
          if (t instanceof KeptTensor) {
            const kept = this.keptIds.get(t);
            if (kept === undefined) throw new Error(`input ${name}: the kept tensor was released`);
            sent[name] = { kept };
            continue;
          }
          const entries = steady?.has(name) === true ? (steadyKept.get(name) ?? []) : undefined;
          const hit = entries?.find((e) => e.feed === t);
          if (hit !== undefined) {
            sent[name] = { kept: hit.id };
            continue;
          }
          const copy = ownedCopy(t);
          transfer.push(copy.data.buffer as ArrayBuffer);
          if (entries === undefined) {
            sent[name] = copy;
            continue;
          }
          const id = this.nextKeep++;
          sent[name] = { ...copy, keep: id };
          entries.push({ feed: t, id });
          if (entries.length > KEPT_PER_INPUT) drop.push(entries.shift()!.id);
          steadyKept.set(name, entries);
        }
        const keepAs = Object.fromEntries(keep.map((name) => [name, this.nextKeep++]));
        const m = await this.ask(
          { kind: "run", id: this.nextId++, session, feeds: sent, drop, keep: keepAs, unused: [...unused] },
          transfer,
        );
        return this.result(m, keepAs);
      },
      tiledDecode: async ({ latents, input, output, temporal, spatial, keep, tileCacheBytes }, onChunk) => {
        const id = this.nextId++;
        const data = (latents.data as Float32Array).slice();
        if (onChunk !== undefined) this.chunkTo.set(id, onChunk);
        const m = await this.ask(
          {
            kind: "tiled-decode",
            id,
            session,
            latents: { data, dims: [...latents.shape] },
            input,
            output,
            temporal,
            ...(spatial !== undefined ? { spatial } : {}),
            ...(keep !== undefined ? { keep } : {}),
            tileCacheBytes: tileCacheBytes ?? 0,
            stream: onChunk !== undefined,
          },
          [data.buffer],
        );
        return this.result(m);
      },
      release: async () => {
        if (this.exited === undefined) {
          const drop = [...steadyKept.values()].flat().map((e) => e.id);
          const released = this.ask({ kind: "release", id: this.nextId++, session, drop }).catch(() => undefined);
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([released, new Promise((r) => (timer = setTimeout(r, 5000)))]);
          clearTimeout(timer);
        }
        await this.closed();
      },
    };
  }
}
