/**
 * In-process bus for embedded mode: the same semantics as the JetStream one (ack wait and
 * redelivery, max deliveries, dedup ids, revision-checked KV, wildcard events) without a server.
 */
import { EventEmitter } from "node:events";
import { FarmError } from "../errors.js";
import {
  DEDUP_WINDOW_MS,
  subjectMatches,
  validateBusName,
  type Bus,
  type Consumer,
  type ConsumeOptions,
  type Delivery,
  type Events,
  type KeyValue,
  type KvEntry,
  type QueueStats,
  type WorkQueues,
} from "./bus.js";

interface Pending {
  data: Uint8Array;
  attempts: number;
  /** Not deliverable before this time (nak delay / ack-wait expiry). */
  dueAt: number;
  leased: boolean;
  timer?: NodeJS.Timeout;
}

class MemoryQueue {
  readonly tasks: Pending[] = [];
  /** Free handler slots of the running consumers. */
  idle = 0;
  readonly seen = new Map<string, number>();
  readonly wake = new EventEmitter();
}

class MemoryQueues implements WorkQueues {
  private readonly queues = new Map<string, MemoryQueue>();

  private q(name: string): MemoryQueue {
    const q = this.queues.get(validateBusName("queue", name));
    if (q === undefined) throw new FarmError("NOT_FOUND", `queue ${name} is not declared`);
    return q;
  }

  async ensure(queue: string): Promise<void> {
    if (!this.queues.has(validateBusName("queue", queue))) this.queues.set(queue, new MemoryQueue());
  }

  async enqueue(queue: string, data: Uint8Array, dedupId?: string): Promise<void> {
    const q = this.q(queue);
    const now = Date.now();
    if (dedupId !== undefined) {
      const at = q.seen.get(dedupId);
      if (at !== undefined && now - at < DEDUP_WINDOW_MS) return;
      // Oldest first (re-inserted at the end), so ids past the window leave from the front.
      q.seen.delete(dedupId);
      q.seen.set(dedupId, now);
      for (const [id, t] of q.seen) {
        if (now - t < DEDUP_WINDOW_MS) break;
        q.seen.delete(id);
      }
    }
    q.tasks.push({ data, attempts: 0, dueAt: now, leased: false });
    q.wake.emit("task");
  }

  async depth(queue: string): Promise<number> {
    return this.q(queue).tasks.filter((t) => !t.leased).length;
  }

  async stats(queue: string): Promise<QueueStats> {
    const q = this.q(queue);
    const leased = q.tasks.filter((t) => t.leased);
    return {
      waiting: q.tasks.length - leased.length,
      inFlight: leased.length,
      redelivered: leased.filter((t) => t.attempts > 1).length,
      idleWorkers: q.idle,
    };
  }

  async consume(queue: string, options: ConsumeOptions, handler: (d: Delivery) => Promise<void>): Promise<Consumer> {
    const q = this.q(queue);
    const concurrency = options.concurrency ?? 1;
    let running = 0;
    let stopped = false;
    let poll: NodeJS.Timeout | undefined;
    const inflight = new Set<Promise<void>>();

    const release = (t: Pending, delay: number): void => {
      clearTimeout(t.timer);
      t.leased = false;
      t.dueAt = Date.now() + delay;
      if (t.attempts >= options.maxDeliver) q.tasks.splice(q.tasks.indexOf(t), 1);
      setTimeout(pump, delay + 1);
    };
    const pump = (): void => {
      while (!stopped && running < concurrency) {
        const now = Date.now();
        const t = q.tasks.find((x) => !x.leased && x.dueAt <= now);
        if (t === undefined) return;
        t.leased = true;
        t.attempts++;
        const arm = (): void => {
          clearTimeout(t.timer);
          t.timer = setTimeout(() => t.leased && release(t, 0), options.ackWaitMs);
        };
        arm();
        let settled = false;
        const settle = (fn: () => void): void => {
          if (!settled) {
            settled = true;
            fn();
          }
        };
        const delivery: Delivery = {
          data: t.data,
          attempt: t.attempts,
          ack: () => settle(() => (clearTimeout(t.timer), q.tasks.splice(q.tasks.indexOf(t), 1))),
          confirmAck: () => Promise.resolve(delivery.ack()),
          nak: (delay = 0) => settle(() => release(t, delay)),
          working: () => !settled && arm(),
          term: () => settle(() => (clearTimeout(t.timer), q.tasks.splice(q.tasks.indexOf(t), 1))),
        };
        running++;
        q.idle--;
        const p = handler(delivery)
          .catch(() => delivery.nak())
          .finally(() => {
            running--;
            if (!stopped) q.idle++;
            inflight.delete(p);
            pump();
          });
        inflight.add(p);
      }
    };
    q.idle += concurrency;
    q.wake.on("task", pump);
    poll = setInterval(pump, 50);
    pump();
    return {
      stop: async () => {
        stopped = true;
        q.idle -= concurrency - running;
        clearInterval(poll);
        poll = undefined;
        q.wake.off("task", pump);
        await Promise.all(inflight);
      },
    };
  }
}

class MemoryKv implements KeyValue {
  private readonly entries = new Map<string, KvEntry>();
  private revision = 0;

  async get(key: string): Promise<KvEntry | null> {
    return this.entries.get(key) ?? null;
  }

  async create(key: string, value: Uint8Array): Promise<number> {
    if (this.entries.has(key)) throw new FarmError("ALREADY_EXISTS", `key ${key} exists`);
    this.entries.set(key, { value, revision: ++this.revision });
    return this.revision;
  }

  async update(key: string, value: Uint8Array, expectedRevision: number): Promise<number> {
    const cur = this.entries.get(key);
    if (cur === undefined || cur.revision !== expectedRevision) {
      throw new FarmError("ABORTED", `key ${key} is at revision ${cur?.revision ?? "none"}, not ${expectedRevision}`);
    }
    this.entries.set(key, { value, revision: ++this.revision });
    return this.revision;
  }

  async delete(key: string): Promise<void> {
    this.entries.delete(key);
  }

  async keys(): Promise<string[]> {
    return [...this.entries.keys()].sort();
  }
}

class MemoryEvents implements Events {
  private readonly subs = new Set<{ pattern: string; handler: (s: string, d: Uint8Array) => void }>();

  publish(subject: string, data: Uint8Array): void {
    for (const s of this.subs) if (subjectMatches(s.pattern, subject)) queueMicrotask(() => s.handler(subject, data));
  }

  subscribe(pattern: string, handler: (subject: string, data: Uint8Array) => void): () => void {
    const sub = { pattern, handler };
    this.subs.add(sub);
    return () => this.subs.delete(sub);
  }
}

export class MemoryBus implements Bus {
  readonly queues = new MemoryQueues();
  readonly events = new MemoryEvents();
  private readonly buckets = new Map<string, MemoryKv>();

  async kv(bucket: string): Promise<KeyValue> {
    let kv = this.buckets.get(validateBusName("bucket", bucket));
    if (kv === undefined) this.buckets.set(bucket, (kv = new MemoryKv()));
    return kv;
  }

  async close(): Promise<void> {}
}
