/**
 * The message bus seam: work queues for stage tasks, a revision-checked key-value store for job
 * and task state, and fire-and-forget events for dashboards. Two implementations share this
 * interface and one contract test: NATS JetStream (clusters) and in-process (embedded mode).
 */
export interface Delivery {
  readonly data: Uint8Array;
  /** 1 on first delivery, 2 after one redelivery, ... */
  readonly attempt: number;
  ack(): void;
  /**
   * Acks and resolves once the queue has confirmed it; rejects if no confirmation came within
   * timeoutMs (the server is away: the caller may try again, an ack is idempotent). A plain ack()
   * sent into a connection that is failing over is lost without a word, and the task comes back.
   */
  confirmAck(timeoutMs: number): Promise<void>;
  /** Give the task back for redelivery (after delayMs). */
  nak(delayMs?: number): void;
  /** Still working: restart the ack-wait clock (long denoise steps). */
  working(): void;
  /** Never deliver again (poison task). */
  term(): void;
}

export interface ConsumeOptions {
  /** Durable consumer name: consumers with one name share the queue's tasks. */
  name: string;
  /** Unacknowledged tasks are redelivered after this long. */
  ackWaitMs: number;
  /** After this many deliveries a task is dropped (the caller records the failure first). */
  maxDeliver: number;
  /** Tasks handled at once by this consumer. */
  concurrency?: number;
}

export interface Consumer {
  stop(): Promise<void>;
}

export interface StoredMessage {
  seq: number;
  dedupId: string | undefined;
  data: Uint8Array;
}

export interface QueueStats {
  /** Tasks not yet handed to a worker (or due again). */
  waiting: number;
  /** Tasks handed to a worker and not yet acknowledged. */
  inFlight: number;
  /** Of those, tasks on their second or later delivery. */
  redelivered: number;
  /** Workers asking for a task right now (idle capacity). */
  idleWorkers: number;
}

/**
 * How long a queue remembers a dedup id. Longer than any task runs: a coordinator taking over (or
 * restarting) sends every task marked queued again, and one still running must not be queued twice.
 */
export const DEDUP_WINDOW_MS = 60 * 60_000;

export interface WorkQueues {
  /** Declares a queue (idempotent). */
  ensure(queue: string): Promise<void>;
  /** Adds a task; a repeated dedupId within the dedup window is dropped. */
  enqueue(queue: string, data: Uint8Array, dedupId?: string): Promise<void>;
  consume(queue: string, options: ConsumeOptions, handler: (d: Delivery) => Promise<void>): Promise<Consumer>;
  /** Tasks waiting (not yet delivered or due again). */
  depth(queue: string): Promise<number>;
  stats(queue: string): Promise<QueueStats>;
  /** NATS only: the messages the queue stores now (waiting or in a worker's hands). */
  stored?(queue: string): Promise<StoredMessage[]>;
  /**
   * NATS only: task messages the queue still stores but its consumer will never hand out (it counts
   * them acked: a consumer whose state lost them in a leader change, as nats-server 2.9 clusters
   * do), seen so on two calls in a row. Each is queued again as a new message when keep() says so,
   * then removed.
   */
  requeueStranded?(
    queue: string,
    keep: (data: Uint8Array) => Promise<boolean>,
  ): Promise<{ requeued: number; removed: number }>;
}

export interface KvEntry {
  value: Uint8Array;
  revision: number;
}

export interface KeyValue {
  get(key: string): Promise<KvEntry | null>;
  /** Creates the key; ALREADY_EXISTS if it is there. Returns the revision. */
  create(key: string, value: Uint8Array): Promise<number>;
  /** Replaces the value if the key is still at expectedRevision; ABORTED otherwise. */
  update(key: string, value: Uint8Array, expectedRevision: number): Promise<number>;
  delete(key: string): Promise<void>;
  keys(): Promise<string[]>;
}

export interface Events {
  publish(subject: string, data: Uint8Array): void;
  /** Subject patterns use NATS wildcards: * for one token, > for the rest. */
  subscribe(pattern: string, handler: (subject: string, data: Uint8Array) => void): () => void;
}

export interface Bus {
  readonly queues: WorkQueues;
  kv(bucket: string): Promise<KeyValue>;
  readonly events: Events;
  close(): Promise<void>;
}

/** NATS subject matching: tokens split on '.', '*' matches one token, '>' the rest. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
export function validateBusName(what: string, name: string): string {
  if (!NAME.test(name)) throw new RangeError(`${what} name ${JSON.stringify(name)} must be 1-64 of [A-Za-z0-9_-]`);
  return name;
}
