/** Bounded shutdown steps and never-empty error messages (shared/shutdown.ts). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { errorMessage, stopInOrder, within } from "../../shared/shutdown.js";

test("an error message is never empty", () => {
  assert.equal(errorMessage(new Error("boom")), "boom");
  for (const e of [
    new Error(""),
    new TypeError(""),
    Object.assign(new Error(""), { code: "ECONNREFUSED" }),
    new AggregateError([], ""),
    "",
    undefined,
    null,
    {},
    0,
  ]) {
    const m = errorMessage(e);
    assert.ok(m.trim().length > 0, `empty message for ${String(e)}`);
  }
  assert.match(errorMessage(Object.assign(new Error(""), { code: "ECONNREFUSED" })), /ECONNREFUSED/);
  assert.equal(errorMessage(new AggregateError([new Error("a"), new Error("b")], "")), "a; b");
  assert.match(errorMessage(new Error("", { cause: new Error("the cause") })), /the cause/);
});

test("within resolves on time or reports the timeout", async () => {
  assert.deepEqual(await within(1000, Promise.resolve(3)), { value: 3, timedOut: false });
  assert.deepEqual(await within(20, new Promise(() => undefined)), { timedOut: true });
});

test("stopInOrder runs every step within the grace period, whatever hangs or fails", async () => {
  const ran: string[] = [];
  const started = Date.now();
  const problems = await stopInOrder(
    [
      { name: "hangs", run: () => (ran.push("hangs"), new Promise(() => undefined)) },
      { name: "fails", run: async () => (ran.push("fails"), Promise.reject(new Error(""))) },
      { name: "works", run: async () => void ran.push("works") },
    ],
    300,
  );
  assert.deepEqual(ran, ["hangs", "fails", "works"]);
  assert.deepEqual(
    problems.map((p) => p.step),
    ["hangs", "fails"],
  );
  for (const p of problems) assert.ok(p.problem.trim() !== "");
  // The hanging step used the grace; the others still get their moment each.
  assert.ok(Date.now() - started < 300 + 2 * 200 + 200, `took ${Date.now() - started} ms`);
});
