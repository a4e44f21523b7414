/**
 * A node's cache of decoded tensor objects. Every object a job writes is written once under a
 * key that names exactly one value, so a cached copy can never be stale: a node keeps what it
 * wrote and what it read (the next section's denoise often runs on the same node and needs the
 * history it just wrote, and every section re-reads the job's prompt and image tensors).
 * Least-recently-used entries go first once the byte budget is spent.
 */
import type { Tensor } from "../../shared/tensor/tensor.js";

export interface CachedObject {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

const bytesOf = (o: CachedObject): number => [...o.tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);

/**
 * The cache's default size on an execution provider (MiB): 4 GiB on CUDA, so that the mux finds a
 * job's decoded sections (~340 MB each at 640x640) in memory rather than reading and re-hashing
 * them from the store (1.2 s for three sections on an H200 host); 512 MiB elsewhere (a CPU
 * render's memory is bounded by test/bench/memory).
 */
export const defaultCacheMb = (ep: string): number => (ep === "cuda" ? 4096 : 512);

export class TensorCache {
  private readonly entries = new Map<string, { value: CachedObject; bytes: number }>();
  private used = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly maxBytes: number) {}

  get(key: string): CachedObject | undefined {
    const e = this.entries.get(key);
    if (e === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // Re-insert to mark as most recently used.
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  set(key: string, value: CachedObject): void {
    const bytes = bytesOf(value);
    if (bytes > this.maxBytes) return;
    const old = this.entries.get(key);
    if (old !== undefined) {
      this.used -= old.bytes;
      this.entries.delete(key);
    }
    this.entries.set(key, { value, bytes });
    this.used += bytes;
    for (const [k, e] of this.entries) {
      if (this.used <= this.maxBytes) break;
      this.entries.delete(k);
      this.used -= e.bytes;
    }
  }

  /** Drops a job's entries (its objects were removed). */
  dropPrefix(prefix: string): void {
    for (const [k, e] of this.entries) {
      if (k.startsWith(prefix)) {
        this.entries.delete(k);
        this.used -= e.bytes;
      }
    }
  }
}
