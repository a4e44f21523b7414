/**
 * `framefarm cluster` stops within a bounded time whatever order its parts die in: SIGTERM to its
 * whole process group (Ctrl-C: every process at once), NATS gone first, the object store gone
 * first, or the cluster process alone. Every process of the group must be gone afterwards and no
 * error line may have an empty message. FRAMEFARM_STOP_GRACE_MS keeps the grace periods short.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { cliPath } from "../support/paths.js";

const GRACE_MS = 2_000;
/** The cluster's own deadline: children's grace + 3 s, servers' 5 s, + 2 s (coordinator/cli/cluster.ts). */
const BOUND_MS = GRACE_MS + 8_000 + 2_000 + 3_000;

interface Cluster {
  child: ChildProcess;
  out: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

async function startCluster(): Promise<Cluster> {
  const child = spawn(
    process.execPath,
    [cliPath(), "cluster", "--http-port", "0", "--nodes", "1", "--denoise-nodes", "1"],
    {
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // its own process group, as a shell gives a foreground job
      env: { ...process.env, FRAMEFARM_STOP_GRACE_MS: String(GRACE_MS), FRAMEFARM_LOG_LEVEL: "error" },
    },
  );
  let out = "";
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (out += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((r) =>
    child.once("exit", (code, signal) => r({ code, signal, at: Date.now() })),
  );
  const deadline = Date.now() + 60_000;
  while (!/gRPC listening on/.test(out)) {
    if (child.exitCode !== null) throw new Error(`cluster exited early: ${out}`);
    if (Date.now() > deadline) throw new Error(`cluster did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  // The nodes are up once both have registered their consumers; give them a moment.
  await waitFor(() => groupPids(child.pid!).filter((p) => p.cmd.includes(" node ")).length === 2, 30_000);
  await new Promise((r) => setTimeout(r, 1_500));
  return { child, out: () => out, exited };
}

function groupPids(pgid: number): { pid: number; cmd: string }[] {
  try {
    return execFileSync("ps", ["-o", "pid=,args=", "-g", String(pgid)], { encoding: "utf8" })
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "")
      .map((l) => ({ pid: Number(l.split(/\s+/)[0]), cmd: l.slice(l.indexOf(" ") + 1) }));
  } catch {
    return []; // ps exits 1 when no process matches
  }
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
}

function pidOf(c: Cluster, pattern: RegExp): number {
  const p = groupPids(c.child.pid!).find((x) => pattern.test(x.cmd));
  assert.ok(p !== undefined, `no ${pattern} in the cluster's group`);
  return p.pid;
}

async function checkStops(c: Cluster, signalledAt: number): Promise<void> {
  const pgid = c.child.pid!;
  const ended = await Promise.race([c.exited, new Promise<null>((r) => setTimeout(() => r(null), BOUND_MS))]);
  try {
    assert.ok(ended !== null, `cluster still running ${BOUND_MS} ms after the signal:\n${c.out().slice(-2000)}`);
    assert.ok(ended.at - signalledAt <= BOUND_MS, `cluster took ${ended.at - signalledAt} ms`);
    assert.ok(
      await waitFor(() => groupPids(pgid).length === 0, 3_000),
      `left running: ${JSON.stringify(groupPids(pgid))}`,
    );
    for (const line of c.out().split("\n"))
      assert.doesNotMatch(line, /^error \[[A-Z_]+\]:\s*$/, "an error line without a message");
  } finally {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

test("SIGTERM to the whole process group (Ctrl-C) stops every process", async () => {
  const c = await startCluster();
  const at = Date.now();
  process.kill(-c.child.pid!, "SIGTERM");
  await checkStops(c, at);
});

test("NATS gone first: the cluster still stops", async () => {
  const c = await startCluster();
  process.kill(pidOf(c, /nats-server/), "SIGKILL");
  await new Promise((r) => setTimeout(r, 1_000));
  const at = Date.now();
  process.kill(c.child.pid!, "SIGTERM");
  await checkStops(c, at);
});

test("object store gone first: the cluster still stops", async () => {
  const c = await startCluster();
  process.kill(pidOf(c, /s3rver/), "SIGKILL");
  await new Promise((r) => setTimeout(r, 1_000));
  const at = Date.now();
  process.kill(c.child.pid!, "SIGTERM");
  await checkStops(c, at);
});

test("NATS and the object store gone first, then the whole group: every process stops", async () => {
  const c = await startCluster();
  process.kill(pidOf(c, /nats-server/), "SIGTERM");
  process.kill(pidOf(c, /s3rver/), "SIGTERM");
  await new Promise((r) => setTimeout(r, 500));
  const at = Date.now();
  process.kill(-c.child.pid!, "SIGTERM");
  await checkStops(c, at);
});

test("the cluster process alone gets SIGTERM: it stops its children and servers", async () => {
  const c = await startCluster();
  const at = Date.now();
  process.kill(c.child.pid!, "SIGTERM");
  await checkStops(c, at);
  const ended = await c.exited;
  assert.equal(ended.code, 0, c.out().slice(-2000));
});
