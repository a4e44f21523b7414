/**
 * One contract for both buses: in-process, and NATS JetStream against a real nats-server
 * (Debian's, started as a child process on loopback with file storage; no mocks).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { subjectMatches, type Delivery, type QueueStats } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import { sleep, until } from "../support/wait.js";
import { forEachBus } from "../support/buses.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Polls read() until it deep-equals want (the JetStream consumer counts settle asynchronously). */
async function untilEqual<T>(read: () => Promise<T>, want: T, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const got = await read();
    try {
      return assert.deepEqual(got, want);
    } catch (err) {
      if (Date.now() > end) throw err;
    }
    await sleep(50);
  }
}

forEachBus(
  (kind) => `${kind} bus`,
  (_name, bus) => {
    test("each task goes to one consumer and is gone once acked", async () => {
      await bus().queues.ensure("denoise");
      for (let i = 0; i < 6; i++) await bus().queues.enqueue("denoise", enc(`t${i}`));
      const got: string[] = [];
      const handler = async (d: Delivery): Promise<void> => {
        got.push(dec(d.data));
        d.ack();
      };
      const a = await bus().queues.consume("denoise", { name: "nodes", ackWaitMs: 5000, maxDeliver: 3 }, handler);
      const b = await bus().queues.consume("denoise", { name: "nodes", ackWaitMs: 5000, maxDeliver: 3 }, handler);
      await until("6 tasks", () => got.length === 6);
      await sleep(200);
      await a.stop();
      await b.stop();
      assert.deepEqual([...got].sort(), ["t0", "t1", "t2", "t3", "t4", "t5"]);
      assert.equal(await bus().queues.depth("denoise"), 0);
    });

    test("an unacknowledged task is redelivered after the ack wait, with its attempt count", async () => {
      await bus().queues.ensure("decode");
      await bus().queues.enqueue("decode", enc("x"));
      const attempts: number[] = [];
      const c = await bus().queues.consume("decode", { name: "flaky", ackWaitMs: 400, maxDeliver: 5 }, async (d) => {
        attempts.push(d.attempt);
        if (d.attempt >= 2) d.ack(); // the first node "dies" without acking
      });
      await until("redelivery", () => attempts.length >= 2);
      await c.stop();
      assert.deepEqual(attempts.slice(0, 2), [1, 2]);
    });

    test("confirmAck() resolves once the ack is taken: the task is gone and not redelivered", async () => {
      await bus().queues.ensure("confirmed");
      await bus().queues.enqueue("confirmed", enc("once"));
      let deliveries = 0;
      let confirmed = false;
      const c = await bus().queues.consume("confirmed", { name: "sure", ackWaitMs: 400, maxDeliver: 5 }, async (d) => {
        deliveries++;
        await d.confirmAck(2000);
        // Sent again (as a node does when it is unsure the first went through): still one task.
        await d.confirmAck(2000);
        confirmed = true;
      });
      await until("the confirmed ack", () => confirmed);
      await sleep(900);
      await c.stop();
      assert.equal(deliveries, 1);
      assert.equal(await bus().queues.depth("confirmed"), 0);
    });

    test("working() keeps a long task from being redelivered", async () => {
      await bus().queues.ensure("longrun");
      await bus().queues.enqueue("longrun", enc("slow"));
      let deliveries = 0;
      const c = await bus().queues.consume("longrun", { name: "slow", ackWaitMs: 500, maxDeliver: 5 }, async (d) => {
        deliveries++;
        for (let i = 0; i < 6; i++) {
          await sleep(200);
          d.working();
        }
        d.ack();
      });
      await until("the task", () => deliveries >= 1);
      await sleep(1600);
      await c.stop();
      assert.equal(deliveries, 1);
    });

    test("a busy consumer holds no second task: an idle one takes it, and depth counts only undelivered tasks", async () => {
      await bus().queues.ensure("encode_image");
      let release = (): void => undefined;
      const busy = new Promise<void>((r) => (release = r));
      const got: string[] = [];
      const slow = await bus().queues.consume(
        "encode_image",
        { name: "pool", ackWaitMs: 10_000, maxDeliver: 3 },
        async (d) => {
          got.push(`slow:${dec(d.data)}`);
          await busy;
          d.ack();
        },
      );
      await bus().queues.enqueue("encode_image", enc("t1"));
      await until("the first task", () => got.length === 1);
      await bus().queues.enqueue("encode_image", enc("t2"));
      await sleep(300); // time for a prefetching consumer to grab t2
      assert.equal(await bus().queues.depth("encode_image"), 1, "t2 waits, undelivered");
      const idle = await bus().queues.consume(
        "encode_image",
        { name: "pool", ackWaitMs: 10_000, maxDeliver: 3 },
        async (d) => {
          got.push(`idle:${dec(d.data)}`);
          d.ack();
        },
      );
      await until("the second task", () => got.length === 2, 3000);
      release();
      await slow.stop();
      await idle.stop();
      assert.deepEqual(got, ["slow:t1", "idle:t2"]);
      assert.equal(await bus().queues.depth("encode_image"), 0);
    });

    test("stats count waiting, in-flight and redelivered tasks", async () => {
      await bus().queues.ensure("statsq");
      await bus().queues.enqueue("statsq", enc("x"));
      const counts = async (): Promise<Omit<QueueStats, "idleWorkers">> => {
        const { waiting, inFlight, redelivered } = await bus().queues.stats("statsq");
        return { waiting, inFlight, redelivered };
      };
      assert.deepEqual(await counts(), { waiting: 1, inFlight: 0, redelivered: 0 });
      let attempt = 0;
      let release = false;
      const c = await bus().queues.consume("statsq", { name: "stats", ackWaitMs: 300, maxDeliver: 5 }, async (d) => {
        attempt = d.attempt;
        if (d.attempt === 1) return; // the first holder "dies": redelivered after the ack wait
        await until("release", () => release);
        d.ack();
      });
      await until("the redelivery", () => attempt === 2);
      await untilEqual(counts, { waiting: 0, inFlight: 1, redelivered: 1 });
      release = true;
      await untilEqual(counts, { waiting: 0, inFlight: 0, redelivered: 0 });
      await c.stop();
    });

    test("a repeated dedup id enqueues once", async () => {
      await bus().queues.ensure("mux");
      await bus().queues.enqueue("mux", enc("a"), "job1/mux");
      await bus().queues.enqueue("mux", enc("a"), "job1/mux");
      assert.equal(await bus().queues.depth("mux"), 1);
    });

    test("KV updates are revision-checked", async () => {
      const kv = await bus().kv("jobs");
      const r1 = await kv.create("job1", enc("queued"));
      await assert.rejects(
        kv.create("job1", enc("again")),
        (e: unknown) => e instanceof FarmError && e.status === "ALREADY_EXISTS",
      );
      const r2 = await kv.update("job1", enc("running"), r1);
      await assert.rejects(
        kv.update("job1", enc("stale"), r1),
        (e: unknown) => e instanceof FarmError && e.status === "ABORTED",
      );
      assert.deepEqual(await kv.get("job1"), { value: enc("running"), revision: r2 });
      await kv.create("job2", enc("x"));
      assert.deepEqual(await kv.keys(), ["job1", "job2"]);
      await kv.delete("job2");
      assert.equal(await kv.get("job2"), null);
    });

    test("keys lists live keys promptly while the bucket is being written", async () => {
      const kv = await bus().kv("busy");
      for (let i = 0; i < 20; i++) await kv.create(`k${i}`, enc("0"));
      await kv.create("gone", enc("x"));
      await kv.delete("gone");
      let writing = true;
      const writer = (async () => {
        // One record rewritten without pause, as the dispatcher does while jobs run.
        for (let n = 1; writing; n++) await kv.update("k0", enc(String(n)), (await kv.get("k0"))!.revision);
      })();
      try {
        for (let i = 0; i < 30; i++) {
          const started = Date.now();
          const keys = await kv.keys();
          assert.equal(keys.length, 20, "every live key, not the deleted one");
          assert.ok(Date.now() - started < 2000, `keys() took ${Date.now() - started} ms`);
        }
      } finally {
        writing = false;
        await writer;
      }
    });

    test("events reach wildcard subscribers", async () => {
      const seen: string[] = [];
      const off = bus().events.subscribe("ff.events.job.*", (s, d) => seen.push(`${s}=${dec(d)}`));
      await sleep(100);
      bus().events.publish("ff.events.job.j1", enc("state"));
      bus().events.publish("ff.events.node.n1", enc("ignored"));
      await until("the event", () => seen.length === 1);
      off();
      assert.deepEqual(seen, ["ff.events.job.j1=state"]);
    });
  },
);

test("subject wildcards follow NATS", () => {
  assert.ok(subjectMatches("a.*.c", "a.b.c"));
  assert.ok(!subjectMatches("a.*", "a.b.c"));
  assert.ok(subjectMatches("a.>", "a.b.c"));
  assert.ok(!subjectMatches("a.>", "a"));
});
