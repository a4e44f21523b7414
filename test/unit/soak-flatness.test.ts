/** The soak's verdict (test/soak/flatness.ts): growth with jobs is caught, noise and small series are not. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { judge, type Sample } from "../soak/flatness.js";

const samples = (f: (i: number) => Record<string, number>, n = 60): Sample[] =>
  Array.from({ length: n }, (_, i) => ({ t: i * 10, jobsEnded: i * 5, values: f(i) }));

test("a series that grows with jobs is not flat; a noisy level one is; warm-up samples are left out", () => {
  const v = judge(
    samples((i) => ({
      "stream_msgs.KV_leak": 100 + i * 5, // one marker per job ended
      "rss_mib.steady": 200 + (i % 2 === 0 ? 20 : -20),
      "rss_mib.warming": i < 10 ? i * 30 : 300,
    })),
    100,
  );
  const by = Object.fromEntries(v.map((x) => [x.series, x]));
  assert.equal(by["stream_msgs.KV_leak"]!.flat, false);
  assert.ok(Math.abs(by["stream_msgs.KV_leak"]!.per1000Jobs - 1000) < 1e-6, "slope: one per job");
  assert.equal(by["rss_mib.steady"]!.flat, true);
  assert.equal(by["rss_mib.warming"]!.flat, true, "the ramp is in the warm-up");
  assert.equal(by["rss_mib.warming"]!.samples, 50);
});

test("a small series moves within its floor", () => {
  const [v] = judge(
    samples((i) => ({ "stream_msgs.FF_Q_denoise": i < 30 ? 0 : 3 })),
    0,
  );
  assert.equal(v!.growth, 3);
  assert.equal(v!.allowed, 25);
  assert.equal(v!.flat, true);
});
