/**
 * Fixed-size time series for the dashboard's charts: a ring of samples that keeps the newest
 * `capacity` and drops the oldest, and a keyed set of them (one per node GPU) that forgets series
 * with nothing inside the window and holds at most `maxSeries`, so memory stays bounded however long
 * the coordinator runs and however many nodes come and go.
 */

export interface Sample<V> {
  /** Unix ms. */
  t: number;
  v: V;
}

export class Ring<V> {
  private readonly items: (Sample<V> | undefined)[];
  private next = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`capacity must be a whole number >= 1, got ${capacity}`);
    this.items = new Array<Sample<V> | undefined>(capacity);
  }

  get size(): number {
    return this.count;
  }

  push(t: number, v: V): void {
    this.items[this.next] = { t, v };
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  /** The newest sample, if any. */
  last(): Sample<V> | undefined {
    return this.count === 0 ? undefined : this.items[(this.next - 1 + this.capacity) % this.capacity];
  }

  /** Samples oldest first, those at or after `since` only. */
  toArray(since = -Infinity): Sample<V>[] {
    const out: Sample<V>[] = [];
    for (let i = 0; i < this.count; i++) {
      const s = this.items[(this.next - this.count + i + this.capacity) % this.capacity]!;
      if (s.t >= since) out.push(s);
    }
    return out;
  }
}

/** Series by key, each a Ring; series whose newest sample left the window are dropped. */
export class SeriesSet<V> {
  private readonly series = new Map<string, Ring<V>>();

  constructor(
    private readonly capacity: number,
    private readonly windowMs: number,
    private readonly maxSeries: number,
  ) {}

  get size(): number {
    return this.series.size;
  }

  push(key: string, t: number, v: V): void {
    let ring = this.series.get(key);
    if (ring === undefined) {
      this.forget(t);
      // Still full of live series: the one sampled longest ago makes room.
      if (this.series.size >= this.maxSeries) {
        const stalest = [...this.series].sort((a, b) => a[1].last()!.t - b[1].last()!.t)[0]!;
        this.series.delete(stalest[0]);
      }
      this.series.set(key, (ring = new Ring<V>(this.capacity)));
    }
    ring.push(t, v);
  }

  /** Drops series with no sample inside the window ending at now. */
  forget(now: number): void {
    for (const [key, ring] of this.series) if (ring.last()!.t < now - this.windowMs) this.series.delete(key);
  }

  /** Every series' samples inside the window ending at now, by key in key order. */
  entries(now: number): [string, Sample<V>[]][] {
    this.forget(now);
    return [...this.series]
      .sort((a, b) => a[0].localeCompare(b[0]))
      .map(([key, ring]) => [key, ring.toArray(now - this.windowMs)]);
  }
}
