/**
 * The leader lease on a real nats-server: one holder at a time; a holder that can no longer reach
 * the bucket (a partition, cut here in front of its KV) steps down before anyone else takes over;
 * a refused renewal ends leadership at once; a clean stop hands over without waiting for the TTL.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { KeyValue } from "../../shared/bus/bus.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { COORDINATOR_BUCKET, LEADER_KEY, LeaderLease, leaseValues } from "../../coordinator/dispatch/leader-lease.js";
import { FarmError } from "../../shared/errors.js";
import { sleep, until } from "../support/wait.js";

const TTL = 600;
let server: LocalServer;
let bus: NatsBus;
let dir: string;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-lease-"));
  server = await startNatsServer(path.join(dir, "js"));
  bus = await NatsBus.connect(`nats://${server.host}:${server.port}`);
});

after(async () => {
  await bus.close();
  await server.stop();
  await rm(dir, { recursive: true, force: true });
});

/**
 * The real bucket behind a switch: while cut, every call fails as over a lost network, at once
 * ("fail": the connection reset) or only once the cut ends ("hang": packets dropped, the call
 * waits for its answer until the link is back or it times out).
 */
function cuttable(kv: KeyValue): { kv: KeyValue; cut: (on: boolean, how?: "fail" | "hang") => void } {
  let cut: "fail" | "hang" | undefined;
  const hanging: (() => void)[] = [];
  const gate = <T>(f: () => Promise<T>): Promise<T> =>
    cut === "fail"
      ? Promise.reject(new FarmError("UNAVAILABLE", "partitioned"))
      : cut === "hang"
        ? new Promise<T>((_, reject) => hanging.push(() => reject(new FarmError("UNAVAILABLE", "timed out"))))
        : f();
  return {
    cut: (on, how = "fail") => {
      cut = on ? how : undefined;
      if (!on) for (const fail of hanging.splice(0)) fail();
    },
    kv: {
      get: (k) => gate(() => kv.get(k)),
      create: (k, v) => gate(() => kv.create(k, v)),
      update: (k, v, r) => gate(() => kv.update(k, v, r)),
      delete: (k) => gate(() => kv.delete(k)),
      keys: () => gate(() => kv.keys()),
    },
  };
}

test("one holder; a partitioned holder steps down before the other takes over; release hands over at once", async () => {
  const kv = await bus.kv(COORDINATOR_BUCKET);
  await kv.delete(LEADER_KEY).catch(() => undefined);
  const events: { who: string; leading: boolean; at: number }[] = [];
  const a = cuttable(kv);
  const la = new LeaderLease(a.kv, {
    holder: "a",
    ttlMs: TTL,
    onChange: (l) => events.push({ who: "a", leading: l, at: performance.now() }),
  });
  const lb = new LeaderLease(kv, {
    holder: "b",
    ttlMs: TTL,
    onChange: (l) => events.push({ who: "b", leading: l, at: performance.now() }),
  });
  await la.start();
  await lb.start();
  try {
    assert.ok(la.isLeader());
    assert.ok(!lb.isLeader());
    // Renewals keep it: several TTLs later a still leads.
    await sleep(3 * TTL);
    assert.ok(la.isLeader() && !lb.isLeader(), JSON.stringify(events));

    a.cut(true);
    await until("b takes over", () => lb.isLeader(), 5 * TTL);
    const aLost = events.find((e) => e.who === "a" && !e.leading);
    const bWon = events.find((e) => e.who === "b" && e.leading);
    assert.ok(aLost !== undefined && bWon !== undefined, JSON.stringify(events));
    assert.ok(aLost.at <= bWon.at, `a stepped down at ${aLost.at}, after b took over at ${bWon.at}`);
    assert.ok(!la.isLeader());

    // a is back: it follows; b's clean stop hands over well within the TTL.
    a.cut(false);
    await sleep(TTL);
    assert.ok(!la.isLeader());
    const stoppedAt = performance.now();
    await lb.stop();
    await until("a takes over after the release", () => la.isLeader(), 5 * TTL);
    assert.ok(performance.now() - stoppedAt < TTL, `took ${performance.now() - stoppedAt} ms`);
  } finally {
    await la.stop();
    await lb.stop();
  }
});

test("a holder whose renewal hangs (packets dropped) steps down at its deadline, not when the call gives up", async () => {
  const kv = await bus.kv(COORDINATOR_BUCKET);
  await kv.delete(LEADER_KEY).catch(() => undefined);
  const events: { who: string; leading: boolean; at: number }[] = [];
  const a = cuttable(kv);
  const la = new LeaderLease(a.kv, {
    holder: "a",
    ttlMs: TTL,
    onChange: (l) => events.push({ who: "a", leading: l, at: performance.now() }),
  });
  const lb = new LeaderLease(kv, {
    holder: "b",
    ttlMs: TTL,
    onChange: (l) => events.push({ who: "b", leading: l, at: performance.now() }),
  });
  await la.start();
  await lb.start();
  try {
    assert.ok(la.isLeader() && !lb.isLeader());
    const cutAt = performance.now();
    a.cut(true, "hang");
    // Nothing asks a whether it leads: its own lease must tell it (onChange), while its renewal hangs.
    await until("b takes over", () => lb.isLeader(), 5 * TTL);
    const aLost = events.find((e) => e.who === "a" && !e.leading);
    const bWon = events.find((e) => e.who === "b" && e.leading)!;
    assert.ok(aLost !== undefined, `a was not told it stopped leading: ${JSON.stringify(events)}`);
    assert.ok(aLost.at - cutAt <= TTL + 250, `a stepped down ${aLost.at - cutAt} ms after the cut`);
    assert.ok(aLost.at <= bWon.at, `a stepped down at ${aLost.at}, after b took over at ${bWon.at}`);
    // The hung renewal fails when the link is back: a follows.
    a.cut(false);
    await sleep(TTL);
    assert.ok(!la.isLeader() && lb.isLeader());
  } finally {
    a.cut(false);
    await la.stop();
    await lb.stop();
  }
});

test("a renewal refused (the key moved on) ends leadership at once", async () => {
  const kv = await bus.kv(COORDINATOR_BUCKET);
  await kv.delete(LEADER_KEY).catch(() => undefined);
  let lost = false;
  const l = new LeaderLease(kv, { holder: "x", ttlMs: 3000, onChange: (leading) => void (lost = !leading) });
  await l.start();
  try {
    assert.ok(l.isLeader());
    const e = (await kv.get(LEADER_KEY))!;
    await kv.update(LEADER_KEY, leaseValues.encode({ holder: "intruder", ttlMs: 3000 }), e.revision);
    // The next renewal (at TTL/3) is refused: stepped down long before the TTL.
    await until("stepped down", () => lost, 2000);
    assert.ok(!l.isLeader());
  } finally {
    await l.stop();
  }
});
