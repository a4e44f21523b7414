/**
 * Which of a farm's coordinators dispatches: a lease in the KV bucket "coordinator", key "leader".
 * Every coordinator serves the API; only the lease holder advances jobs.
 *
 * - Acquire: create the key (absent), or update it at the revision last seen once that revision
 *   has stood unchanged for the TTL on this process's own clock (the holder stopped renewing), or
 *   at once if the holder released it on a clean stop.
 * - Renew: a revision-checked update every TTL/3. Leadership ends at once when a renewal is refused
 *   (someone else holds the key now) or when no renewal succeeded within the TTL of sending the
 *   last good one (NATS away, a partition, a stalled process).
 *
 * No clocks are compared across processes: the holder's deadline counts from before its write
 * reached the server, a follower's wait from after it saw that write, so the holder has stepped
 * down before any follower may take over. isLeader() checks the deadline itself, not a timer, so
 * a late event loop cannot stretch it; a timer at the deadline tells the holder (onChange) even
 * while its renewal hangs on a link that drops packets, where the call fails only when it times
 * out, seconds after a follower took over (its dispatcher would go on taking results till then).
 */
import { performance } from "node:perf_hooks";
import type { KeyValue } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import { jsonCodec } from "../../shared/farm/codec.js";
import type { Logger } from "../../shared/log/logger.js";

export const COORDINATOR_BUCKET = "coordinator";
export const LEADER_KEY = "leader";
export const DEFAULT_LEASE_TTL_MS = 5000;

export interface LeaseValue {
  /** The holder's id (host, pid and a random part: a restarted process is someone new). */
  holder: string;
  ttlMs: number;
  /** Set by a holder that stopped cleanly: take over without waiting. */
  released?: boolean;
}
export const leaseValues = jsonCodec<LeaseValue>();

export interface LeaseOptions {
  holder: string;
  ttlMs: number;
  /** Called on every change of leadership, first with true once acquired. Must not throw. */
  onChange: (leading: boolean) => void;
  log?: Logger;
}

export class LeaderLease {
  private revision: number | null = null;
  /** While leading: when leadership lapses unless renewed (performance.now() ms). */
  private deadline = 0;
  private leading = false;
  /** While following: the revision seen and since when it stood unchanged. */
  private seen: { revision: number; since: number; ttlMs: number; released: boolean } | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** While leading: fires at the deadline, so leadership ends on time whatever else is waiting. */
  private expiry: NodeJS.Timeout | undefined;
  private stopped = false;
  private busy: Promise<void> = Promise.resolve();

  constructor(
    private readonly kv: KeyValue,
    private readonly o: LeaseOptions,
  ) {
    if (!Number.isInteger(o.ttlMs) || o.ttlMs < 300)
      throw new FarmError("INVALID_ARGUMENT", `lease TTL must be an integer of at least 300 ms, got ${o.ttlMs}`);
  }

  /** Starts competing for the lease (the first attempt is made before this returns). */
  async start(): Promise<void> {
    await this.step();
    this.schedule();
  }

  get holder(): string {
    return this.o.holder;
  }

  /** True while the lease is held and not past its deadline. */
  isLeader(): boolean {
    if (this.leading && performance.now() >= this.deadline) this.lose("no renewal within the TTL");
    return this.leading;
  }

  /** Announces leadership again (the holder's earlier take-over did not complete). */
  retake(): void {
    if (this.isLeader()) this.o.onChange(true);
  }

  private value(released = false): Uint8Array {
    return leaseValues.encode({ holder: this.o.holder, ttlMs: this.o.ttlMs, ...(released ? { released } : {}) });
  }

  private schedule(): void {
    if (this.stopped) return;
    // Renew at a third of the TTL; watch the holder more often so a takeover comes soon after expiry.
    const every = this.leading ? this.o.ttlMs / 3 : Math.min(500, this.o.ttlMs / 5);
    this.timer = setTimeout(() => {
      this.busy = this.step().finally(() => this.schedule());
    }, every);
    this.timer.unref();
  }

  private async step(): Promise<void> {
    if (this.stopped) return;
    try {
      if (this.isLeader()) await this.renew();
      else await this.tryAcquire();
    } catch (err) {
      // NATS away: a holder steps down when its deadline passes (isLeader), a follower waits.
      this.o.log?.debug({ err: (err as Error).message }, "leader lease: bus unavailable");
      this.isLeader();
    }
  }

  private async renew(): Promise<void> {
    const sent = performance.now();
    try {
      this.revision = await this.kv.update(LEADER_KEY, this.value(), this.revision!);
    } catch (err) {
      if (!(err instanceof FarmError) || err.status !== "ABORTED") throw err;
      // An earlier renewal whose answer was lost may have landed: ours still, at a newer revision.
      const e = await this.kv.get(LEADER_KEY);
      const v = e === null ? undefined : leaseValues.decode(e.value);
      if (e === null || v?.holder !== this.o.holder || v.released === true) return this.lose("the lease moved on");
      this.revision = e.revision;
      return;
    }
    if (!this.leading) return; // lapsed while the renewal was on its way: stays lapsed
    this.deadline = sent + this.o.ttlMs;
    this.armExpiry();
  }

  private armExpiry(): void {
    clearTimeout(this.expiry);
    if (!this.leading) return;
    // A timer can fire early by this clock (it counts from the loop's cached time): armed again then.
    this.expiry = setTimeout(
      () => void (this.isLeader() && this.armExpiry()),
      Math.max(0, this.deadline - performance.now()) + 1,
    );
    this.expiry.unref();
  }

  private async tryAcquire(): Promise<void> {
    const sent = performance.now();
    const e = await this.kv.get(LEADER_KEY);
    if (e === null) {
      try {
        this.revision = await this.kv.create(LEADER_KEY, this.value());
      } catch (err) {
        if (err instanceof FarmError && err.status === "ALREADY_EXISTS") return; // another coordinator was first
        throw err;
      }
      return this.win(sent);
    }
    const now = performance.now();
    if (this.seen?.revision !== e.revision) {
      const v = leaseValues.decode(e.value);
      this.seen = {
        revision: e.revision,
        since: now,
        ttlMs: Math.max(v.ttlMs, this.o.ttlMs),
        released: v.released === true,
      };
    }
    if (!this.seen.released && now - this.seen.since < this.seen.ttlMs) return;
    try {
      this.revision = await this.kv.update(LEADER_KEY, this.value(), e.revision);
    } catch (err) {
      if (err instanceof FarmError && err.status === "ABORTED") return; // renewed, or taken by another
      throw err;
    }
    this.win(sent);
  }

  private win(sent: number): void {
    this.deadline = sent + this.o.ttlMs;
    this.leading = true;
    this.seen = undefined;
    this.armExpiry();
    this.o.log?.info({ holder: this.o.holder, ttlMs: this.o.ttlMs }, "leader lease acquired: dispatching");
    this.o.onChange(true);
  }

  private lose(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.revision = null;
    clearTimeout(this.expiry);
    this.o.log?.warn({ holder: this.o.holder, why }, "leader lease lost: dispatching stopped");
    this.o.onChange(false);
  }

  /** Stops competing; a holder releases the lease so a follower takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.busy;
    if (!this.isLeader()) return;
    const revision = this.revision!;
    this.lose("stopping");
    await this.kv.update(LEADER_KEY, this.value(true), revision).catch(() => undefined);
  }
}
