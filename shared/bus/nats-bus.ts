/**
 * The bus on NATS JetStream: one work-queue stream per queue (file storage, explicit acks,
 * redelivery after the ack wait, Nats-Msg-Id dedup), KV buckets for state (revision-checked
 * updates), and core NATS subjects for events. A process may connect as a NATS user whose
 * permissions allow only its part (shared/farm/nats-permissions.ts): what the server refuses is
 * PERMISSION_DENIED naming the subject and the user, never a silent loss.
 */
import { connect } from "@nats-io/transport-node";
import { PermissionViolationError, type NatsConnection } from "@nats-io/nats-core";
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type StreamInfo,
} from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { FarmError } from "../errors.js";
import { within } from "../shutdown.js";
import {
  DEDUP_WINDOW_MS,
  validateBusName,
  type Bus,
  type Consumer,
  type ConsumeOptions,
  type Delivery,
  type Events,
  type KeyValue,
  type KvEntry,
  type QueueStats,
  type StoredMessage,
  type WorkQueues,
} from "./bus.js";

const ms = (n: number): number => n * 1_000_000;
/**
 * A task message older than this is dropped by the stream. Acked and terminated tasks leave at
 * once; what this bounds is leftovers, such as a task past its consumer's max deliveries, which a
 * work-queue stream keeps for good. No live task waits this long: the dispatcher queues a task
 * only when a node asks for one, and a coordinator that starts queues every task marked queued again.
 */
export const TASK_MAX_AGE_MS = 24 * 3_600_000;
/** What a KV key may be (the NATS KV client's rule): purging by a key with wildcards would purge others. */
const KV_KEY = /^[-/=.\w]+$/;
const ACK = new TextEncoder().encode("+ACK");
/** The JetStream stream behind a queue (KEDA's autoscaler names it too: deploy/k8s). */
export const streamOf = (queue: string): string => `FF_Q_${queue}`;
/** The subject a queue's tasks are published on. */
export const queueSubjectOf = (queue: string): string => `ff.q.${queue}`;
const subjectOf = queueSubjectOf;
/** The JetStream stream behind a KV bucket (the client's own naming). */
export const kvStreamOf = (bucket: string): string => `KV_${bucket}`;
/**
 * Where a NATS user's request replies arrive: its own inbox prefix, so that its permissions can
 * let it read its own replies and no one else's (the default _INBOX.> would show it every
 * other client's replies, job records included).
 */
export const inboxPrefixFor = (user: string): string => `_INBOX_${user}`;

/** The server's permission refusal behind err (requests wrap it as their cause), if that is what it is. */
function violation(err: unknown): PermissionViolationError | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++)
    if (e instanceof PermissionViolationError) return e;
  return undefined;
}

/** What the server refused, as PERMISSION_DENIED naming the subject; other errors as they are. */
function refused(cause: unknown, user: string | undefined): unknown {
  const err = violation(cause);
  if (err === undefined) return cause;
  return new FarmError(
    "PERMISSION_DENIED",
    `NATS refused ${err.operation === "subscription" ? "a subscription" : "a publish"} to "${err.subject}" for ` +
      `${user === undefined ? "this connection" : `user ${user}`}: its permissions do not allow it`,
    { cause },
  );
}

/**
 * Waits for a stream this user may not create to be created by one who may (the coordinator
 * creates every stream and bucket of the farm at start; a node started first waits for it).
 */
async function awaitStream(jsm: JetStreamManager, name: string, refusal: unknown, access: Access): Promise<StreamInfo> {
  const end = Date.now() + access.awaitMs;
  const err = refused(refusal, access.user) as FarmError;
  access.onRefused?.(
    new FarmError(
      "PERMISSION_DENIED",
      `${err.message} (stream ${name}); waiting up to ${Math.round(access.awaitMs / 1000)} s for a coordinator to create it`,
    ),
  );
  for (;;) {
    try {
      return await jsm.streams.info(name);
    } catch (e) {
      if (violation(e) !== undefined || Date.now() > end)
        throw new FarmError(
          "PERMISSION_DENIED",
          `${err.message}, and stream ${name} does not exist: start a coordinator, which creates it`,
          { cause: e },
        );
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Runs a bus call, turning a permission refusal into PERMISSION_DENIED. */
async function guarded<T>(user: string | undefined, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw refused(err, user);
  }
}

/** The connection's user and what it does about refusals (NatsConnectOptions). */
interface Access {
  user: string | undefined;
  onRefused: ((err: FarmError) => void) | undefined;
  awaitMs: number;
}

/** A `--nats` value: one server URL or several, comma-separated. */
export function natsServers(urls: string): string[] {
  return urls
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u !== "");
}

class NatsQueues implements WorkQueues {
  private readonly user: string | undefined;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly replicas: number,
    private readonly access: Access,
    private readonly nc: NatsConnection,
  ) {
    this.user = access.user;
  }

  ensure(queue: string): Promise<void> {
    return guarded(this.user, () => this.ensureStream(queue));
  }

  private async ensureStream(queue: string): Promise<void> {
    validateBusName("queue", queue);
    const config = {
      name: streamOf(queue),
      subjects: [subjectOf(queue)],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      duplicate_window: ms(DEDUP_WINDOW_MS),
      max_age: ms(TASK_MAX_AGE_MS),
      num_replicas: this.replicas,
    };
    let existing: StreamInfo;
    try {
      existing = await this.jsm.streams.info(config.name);
    } catch (err) {
      if (violation(err) !== undefined) throw err;
      try {
        await this.jsm.streams.add(config);
        return;
      } catch (e) {
        if (violation(e) === undefined) throw e;
        existing = await awaitStream(this.jsm, config.name, e, this.access);
      }
    }
    // A stream made by an earlier version (a 2-minute dedup window, no age limit) gets these (from
    // whoever may change it: a node's user may not, and the coordinator's start does it).
    if (existing.config.duplicate_window < config.duplicate_window || existing.config.max_age !== config.max_age)
      await this.jsm.streams
        .update(config.name, {
          ...existing.config,
          duplicate_window: Math.max(existing.config.duplicate_window, config.duplicate_window),
          max_age: config.max_age,
        })
        .catch((e: unknown) => {
          if (violation(e) === undefined) throw e;
        });
  }

  async enqueue(queue: string, data: Uint8Array, dedupId?: string): Promise<void> {
    await guarded(this.user, () =>
      this.js.publish(subjectOf(queue), data, dedupId !== undefined ? { msgID: dedupId } : {}),
    );
  }

  async depth(queue: string): Promise<number> {
    return (await this.stats(queue)).waiting;
  }

  /** From the queue's consumer (a work-queue stream has exactly one); an idle worker holds an open pull request. */
  stats(queue: string): Promise<QueueStats> {
    return guarded(this.user, () => this.statsOf(queue));
  }

  private async statsOf(queue: string): Promise<QueueStats> {
    const stream = streamOf(queue);
    const [c] = await this.jsm.consumers.list(stream).next();
    if (c === undefined)
      return {
        waiting: (await this.jsm.streams.info(stream)).state.messages,
        inFlight: 0,
        redelivered: 0,
        idleWorkers: 0,
      };
    return {
      waiting: c.num_pending,
      inFlight: c.num_ack_pending,
      redelivered: c.num_redelivered,
      idleWorkers: c.num_waiting,
    };
  }

  /** Per queue, the stranded sequence numbers the last requeueStranded call saw. */
  private readonly strandedSeen = new Map<string, Set<number>>();

  /** The queue's stored messages from sequence `from` to `to` (a few: a work queue holds only what is not done). */
  private async scan(queue: string, from: number, to: number, limit = 10_000): Promise<StoredMessage[]> {
    const stream = streamOf(queue);
    const out: StoredMessage[] = [];
    for (let seq = from; seq <= to && out.length < limit;) {
      // next_by_subj (nats-server 2.9+): the first stored message at or after seq (null: none).
      // Any error (a failover) throws: a short list would make the caller think stored tasks
      // lost and queue them again.
      const m = await this.jsm.streams.getMessage(stream, {
        seq,
        next_by_subj: subjectOf(queue),
      } as unknown as { seq: number });
      if (m === null || m.seq > to) break;
      out.push({ seq: m.seq, dedupId: m.header?.get("Nats-Msg-Id") || undefined, data: m.data });
      seq = m.seq + 1;
    }
    return out;
  }

  stored(queue: string): Promise<StoredMessage[]> {
    return guarded(this.user, () => this.storedIn(queue));
  }

  private async storedIn(queue: string): Promise<StoredMessage[]> {
    const { state } = await this.jsm.streams.info(streamOf(queue));
    return state.messages === 0 ? [] : this.scan(queue, state.first_seq, state.last_seq);
  }

  requeueStranded(
    queue: string,
    keep: (data: Uint8Array) => Promise<boolean>,
  ): Promise<{ requeued: number; removed: number }> {
    return guarded(this.user, () => this.requeueStrandedIn(queue, keep));
  }

  private async requeueStrandedIn(
    queue: string,
    keep: (data: Uint8Array) => Promise<boolean>,
  ): Promise<{ requeued: number; removed: number }> {
    const stream = streamOf(queue);
    const done = { requeued: 0, removed: 0 };
    const [c] = await this.jsm.consumers.list(stream).next();
    const info = await this.jsm.streams.info(stream);
    if (c === undefined || info.state.messages === 0) return (this.strandedSeen.delete(queue), done);
    // Nothing at or below the ack floor should still be stored (acked work-queue messages are
    // removed); with nothing awaiting an ack, nothing delivered should be either; with nothing
    // pending either, nothing at all (a consumer whose copy of the stream lacks them).
    const idle = c.num_ack_pending === 0;
    const bound =
      idle && c.num_pending === 0 ? info.state.last_seq : idle ? c.delivered.stream_seq : c.ack_floor.stream_seq;
    const found = await this.scan(queue, info.state.first_seq, bound, 100);
    const before = this.strandedSeen.get(queue) ?? new Set<number>();
    this.strandedSeen.set(queue, new Set(found.map((m) => m.seq)));
    const confirmed = found.filter((m) => before.has(m.seq));
    if (confirmed.length === 0) return done;
    // Another server takes the consumer over (from its own state and copy of the stream) ...
    await this.nc
      .request(`$JS.API.CONSUMER.LEADER.STEPDOWN.${stream}.${c.name}`, undefined, { timeout: 5_000 })
      .catch(() => undefined);
    // ... and the stranded messages are queued again in any case.
    for (const m of found) {
      if (!before.has(m.seq)) continue; // seen once: maybe an ack on its way; the next call decides
      if (await keep(m.data)) {
        // Queued again first, then removed: a failure in between leaves a duplicate, never a loss.
        await this.js.publish(subjectOf(queue), m.data, { msgID: `${m.dedupId ?? "seq"}.requeued-${m.seq}` });
        done.requeued++;
      } else done.removed++;
      await this.jsm.streams.deleteMessage(stream, m.seq, false).catch(() => undefined);
    }
    return done;
  }

  consume(queue: string, options: ConsumeOptions, handler: (d: Delivery) => Promise<void>): Promise<Consumer> {
    return guarded(this.user, () => this.consumeQueue(queue, options, handler));
  }

  private async consumeQueue(
    queue: string,
    options: ConsumeOptions,
    handler: (d: Delivery) => Promise<void>,
  ): Promise<Consumer> {
    const stream = streamOf(queue);
    const durable = validateBusName("consumer", options.name);
    const config = {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: ms(options.ackWaitMs),
      max_deliver: options.maxDeliver,
      max_ack_pending: 1000,
    };
    try {
      await this.jsm.consumers.add(stream, config);
    } catch (err) {
      // An existing durable with other settings is updated in place.
      if (!(err instanceof JetStreamApiError)) throw err;
      await this.jsm.consumers.update(stream, durable, { ack_wait: config.ack_wait, max_deliver: config.max_deliver });
    }
    const consumer = await this.js.consumers.get(stream, durable);
    const concurrency = options.concurrency ?? 1;
    const inflight = new Set<Promise<void>>();
    let stopped = false;
    let batch: ConsumerMessages | undefined;
    // One pull per free slot, never ahead: consume()'s refilling pull would hand a busy worker a
    // second task that an idle worker could have run (the task then waits for the busy one).
    const loop = (async () => {
      while (!stopped) {
        if (inflight.size >= concurrency) {
          await Promise.race(inflight);
          continue;
        }
        try {
          batch = await consumer.fetch({ max_messages: concurrency - inflight.size, expires: 5_000 });
          for await (const m of batch) {
            const delivery: Delivery = {
              data: m.data,
              attempt: m.info.deliveryCount,
              ack: () => m.ack(),
              // A double ack, sent by hand so that it can be sent again (JsMsg.ackAck() sends once).
              confirmAck: async (timeoutMs) => {
                const reply = (m as { reply?: string }).reply ?? "";
                if (reply === "") return;
                await this.nc.request(reply, ACK, { timeout: timeoutMs });
              },
              nak: (delay) => m.nak(delay),
              working: () => m.working(),
              term: () => m.term(),
            };
            const p = handler(delivery)
              .catch(() => m.nak())
              .finally(() => inflight.delete(p));
            inflight.add(p);
          }
        } catch {
          // The server is away (restart, network): try again shortly.
          if (!stopped) await new Promise((r) => setTimeout(r, 500));
        } finally {
          batch = undefined;
        }
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        await batch?.close();
        await loop;
        await Promise.all(inflight);
      },
    };
  }
}

class NatsKv implements KeyValue {
  constructor(
    private readonly kv: Awaited<ReturnType<Kvm["create"]>>,
    private readonly jsm: JetStreamManager,
    private readonly bucket: string,
    private readonly user: string | undefined,
  ) {}

  async get(key: string): Promise<KvEntry | null> {
    const e = await guarded(this.user, () => this.kv.get(key));
    if (e === null || e.operation !== "PUT") return null;
    // The client hands back Buffers; callers get plain Uint8Arrays from either bus.
    return { value: new Uint8Array(e.value), revision: e.revision };
  }

  async create(key: string, value: Uint8Array): Promise<number> {
    try {
      return await this.kv.create(key, value);
    } catch (err) {
      if (violation(err) !== undefined) throw refused(err, this.user);
      throw new FarmError("ALREADY_EXISTS", `key ${key} exists`, { cause: err });
    }
  }

  async update(key: string, value: Uint8Array, expectedRevision: number): Promise<number> {
    try {
      return await this.kv.update(key, value, expectedRevision);
    } catch (err) {
      if (violation(err) !== undefined) throw refused(err, this.user);
      throw new FarmError("ABORTED", `key ${key} is not at revision ${expectedRevision}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /**
   * Removes the key and leaves nothing behind. The client's delete writes a marker message that a
   * history-1 bucket keeps for good: one per key ever deleted (jobs, idempotency keys, webhook
   * cursors, drain requests), so the bucket grew with every job. Purging the key's subject removes
   * its value and any marker; a later create or update sees no key, as after a delete.
   */
  async delete(key: string): Promise<void> {
    if (!KV_KEY.test(key) || key.startsWith(".") || key.endsWith("."))
      throw new FarmError("INVALID_ARGUMENT", `invalid KV key ${JSON.stringify(key)}`);
    await guarded(this.user, () =>
      this.jsm.streams.purge(kvStreamOf(this.bucket), { filter: `$KV.${this.bucket}.${key}` }),
    );
  }

  /**
   * From one stream-info request (the bucket's subjects), not the client's keys(): that one waits
   * on a push consumer for a "nothing pending" that, seen here after a coordinator was killed and
   * restarted mid-job, never came. A deleted key keeps its delete marker, so keys are checked.
   */
  async keys(): Promise<string[]> {
    const prefix = `$KV.${this.bucket}.`;
    const info = await guarded(this.user, () =>
      this.jsm.streams.info(kvStreamOf(this.bucket), { subjects_filter: `${prefix}>` }),
    );
    const candidates = Object.keys(info.state.subjects ?? {}).map((s) => s.slice(prefix.length));
    const live: string[] = [];
    for (let i = 0; i < candidates.length; i += 100) {
      const batch = await Promise.all(
        candidates.slice(i, i + 100).map(async (k) => ((await this.get(k)) !== null ? k : null)),
      );
      for (const k of batch) if (k !== null) live.push(k);
    }
    return live.sort();
  }
}

class NatsEvents implements Events {
  constructor(private readonly nc: NatsConnection) {}

  publish(subject: string, data: Uint8Array): void {
    this.nc.publish(subject, data);
  }

  subscribe(pattern: string, handler: (subject: string, data: Uint8Array) => void): () => void {
    const sub = this.nc.subscribe(pattern, {
      callback: (err, m) => {
        if (err === null) handler(m.subject, m.data);
      },
    });
    return () => sub.unsubscribe();
  }
}

/** Who this process is to the NATS server (none: a server without authorization). */
export interface NatsCredentials {
  user: string;
  password: string;
}

export interface NatsConnectOptions {
  credentials?: NatsCredentials;
  /** How long to wait for a stream or bucket this user may not create (default 5 minutes). */
  awaitStreamsMs?: number;
  /**
   * Hears each refusal the server sends, including those of plain publishes (events), which have
   * no caller to reject: the process logs them. The same subject is told at most every 10 s.
   */
  onRefused?: (err: FarmError) => void;
}

export class NatsBus implements Bus {
  private constructor(
    private readonly nc: NatsConnection,
    readonly queues: WorkQueues,
    readonly events: Events,
    private readonly kvm: Kvm,
    private readonly jsm: JetStreamManager,
    private readonly replicas: number,
    private readonly access: Access,
  ) {}

  /**
   * `servers`: one URL, or several comma-separated (the servers of a cluster: the client connects to
   * one and, when it goes away, reconnects to another). `replicas`: JetStream copies of each stream
   * and KV bucket created here (1, or 3 on a 3-server cluster).
   */
  static async connect(
    servers: string,
    name = "framefarm",
    replicas = 1,
    options: NatsConnectOptions = {},
  ): Promise<NatsBus> {
    const creds = options.credentials;
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: natsServers(servers),
        name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        ...(creds !== undefined
          ? { user: creds.user, pass: creds.password, inboxPrefix: inboxPrefixFor(creds.user) }
          : {}),
      });
    } catch (err) {
      const m = (err as Error).message;
      // A wrong user or password is not an outage: say which user was turned away.
      if (/authorization/i.test(m))
        throw new FarmError(
          "UNAUTHENTICATED",
          `NATS at ${servers} refused ${creds === undefined ? "a connection without credentials" : `user ${creds.user}`}: ${m}`,
          { cause: err },
        );
      throw new FarmError("UNAVAILABLE", `cannot reach NATS at ${servers}: ${m}`, { cause: err });
    }
    const access: Access = {
      user: creds?.user,
      onRefused: options.onRefused,
      awaitMs: options.awaitStreamsMs ?? 5 * 60_000,
    };
    if (options.onRefused !== undefined) watchRefusals(nc, access.user, options.onRefused);
    const js = jetstream(nc);
    const jsm = await guarded(access.user, () => jetstreamManager(nc));
    return new NatsBus(
      nc,
      new NatsQueues(js, jsm, replicas, access, nc),
      new NatsEvents(nc),
      new Kvm(nc),
      jsm,
      replicas,
      access,
    );
  }

  async kv(bucket: string): Promise<KeyValue> {
    validateBusName("bucket", bucket);
    const open = (): ReturnType<Kvm["create"]> =>
      this.kvm.create(bucket, {
        history: 1,
        storage: StorageType.File,
        replicas: this.replicas,
        // Reads go to the bucket's leader. A direct get may be answered by any replica, and one that
        // lags (restarted, or behind after a failover) answers with an older record or none: a job
        // just created read back as missing, a node dropping a live job's task as "over".
        allow_direct: false,
      });
    const kv = await guarded(this.access.user, async () => {
      try {
        return await open();
      } catch (err) {
        if (violation(err) === undefined) throw err;
        // Not this user's to create (a node's jobs bucket): wait for the coordinator's.
        await awaitStream(this.jsm, kvStreamOf(bucket), err, this.access);
        return open();
      }
    });
    return new NatsKv(kv, this.jsm, bucket, this.access.user);
  }

  /**
   * Drains (flushes what is published, lets subscriptions finish) when the server answers; when it
   * does not (it is gone, and the client would wait for a reconnect forever) closes after
   * drainMs, dropping what was not sent.
   */
  async close(drainMs = 2_000): Promise<void> {
    if (this.nc.isClosed()) return;
    const drained = await within(
      drainMs,
      this.nc.drain().then(
        () => true,
        () => false,
      ),
    ).catch(() => ({ timedOut: true as const }));
    if (drained.timedOut || !drained.value) await this.nc.close().catch(() => undefined);
  }
}

/** Passes each permission refusal the server reports to onRefused, once per subject per 10 s. */
function watchRefusals(nc: NatsConnection, user: string | undefined, onRefused: (err: FarmError) => void): void {
  const told = new Map<string, number>();
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type !== "error" || !(s.error instanceof PermissionViolationError)) continue;
      const at = told.get(s.error.subject);
      if (at !== undefined && Date.now() - at < 10_000) continue;
      told.set(s.error.subject, Date.now());
      onRefused(refused(s.error, user) as FarmError);
    }
  })();
}
