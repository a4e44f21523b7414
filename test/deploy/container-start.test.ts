/**
 * The dev overlay's coordinator and node containers, started as the image would start them
 * (`node <bin> <args>` with the environment Kubernetes assembles from the manifests) against a
 * real nats-server and S3 server on loopback. Only the addresses (Service DNS names), the S3
 * credentials (the local S3 server's) and, for the coordinator, the port (50051 may be taken on a
 * shared machine; the manifest's port is checked in code-agreement.test.ts) are replaced. The
 * coordinator must answer the kubelet's gRPC probe, as the manifest writes it, with SERVING; the
 * nodes must come up serving the stages the manifest names, under the pod's name.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { credentials, loadPackageDefinition } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { LOOPBACK, S3_ACCESS_KEY, S3_SECRET_KEY, freePort, startNatsServer, startS3Server, type LocalServer } from "../../coordinator/cluster/local-servers.js";
import { STAGE_GROUPS } from "../../coordinator/cli/node.js";
import { cliPath, repoRoot } from "../support/paths.js";
import { render } from "./support/render.js";
import { byKind, containerEnv, podSpecs, type Container } from "./support/query.js";

let dir: string;
let nats: LocalServer;
let s3: LocalServer;
const children: ChildProcess[] = [];

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-deploy-"));
  nats = await startNatsServer(path.join(dir, "nats"));
  s3 = await startS3Server(path.join(dir, "s3"));
});

after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  await nats?.stop();
  await s3?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const objects = render("overlays/dev");
function container(deployment: string): { c: Container; env: Map<string, string> } {
  const d = byKind(objects, "Deployment").find((o) => o.metadata.name === deployment)!;
  const c = podSpecs(d)[0]!.containers[0]!;
  return { c, env: containerEnv(objects, c) };
}

/** The container's process: the image's ENTRYPOINT is `node <bin>` (code-agreement.test.ts). */
function start(c: Container, env: Map<string, string>, podName: string): { child: ChildProcess; output: () => string } {
  const localEnv = new Map(env);
  localEnv.set("FRAMEFARM_NATS", `nats://${nats.host}:${nats.port}`);
  localEnv.set("FRAMEFARM_S3", `${s3.host}:${s3.port}`);
  localEnv.set("FRAMEFARM_S3_ACCESS_KEY", S3_ACCESS_KEY);
  localEnv.set("FRAMEFARM_S3_SECRET_KEY", S3_SECRET_KEY);
  for (const [k, v] of localEnv) if (v === "<fieldRef:metadata.name>") localEnv.set(k, podName);
  for (const [k, v] of localEnv) assert.doesNotMatch(v, /^<.*>$/, `${k} has no value outside Kubernetes`);
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FRAMEFARM_")));
  const child = spawn(process.execPath, [cliPath(), ...(c.args ?? [])], { cwd: repoRoot(), env: { ...inherited, ...Object.fromEntries(localEnv) }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (out += b.toString()));
  return { child, output: () => out };
}

async function waitFor(what: string, check: () => boolean, child: ChildProcess, output: () => string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (child.exitCode !== null) throw new Error(`${what}: the process exited ${child.exitCode}: ${output()}`);
    if (Date.now() > deadline) throw new Error(`${what}: timed out: ${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopped(child: ChildProcess): Promise<number | null> {
  child.kill("SIGTERM");
  return child.exitCode !== null ? child.exitCode : new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

type HealthClient = { check(r: { service: string }, cb: (e: Error | null, r: { status: string }) => void): void; close(): void };

test("dev coordinator: starts from its manifest and answers its gRPC probe with SERVING", async () => {
  const { c, env } = container("framefarm-coordinator");
  const port = await freePort();
  env.set("FRAMEFARM_PORT", String(port));
  // The dashboard's default 8080 may be taken on a shared machine too.
  env.set("FRAMEFARM_HTTP_PORT", String(await freePort()));
  const { child, output } = start(c, env, "framefarm-coordinator-7c9d4-x2x7q");
  await waitFor("coordinator", () => /gRPC listening on/.test(output()), child, output);
  assert.match(output(), new RegExp(`gRPC listening on ${env.get("FRAMEFARM_HOST")!.replace(/\./g, "\\.")}:${port}`));
  const healthProto = path.join(repoRoot(), "node_modules", "grpc-health-check", "proto", "health", "v1", "health.proto");
  const def = loadPackageDefinition(loadSync(healthProto, { enums: String })) as unknown as { grpc: { health: { v1: { Health: new (a: string, c: unknown) => HealthClient } } } };
  const health = new def.grpc.health.v1.Health(`${LOOPBACK}:${port}`, credentials.createInsecure());
  for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"] as const) {
    const service = c[kind]?.grpc?.service ?? "";
    const res = await new Promise<{ status: string }>((resolve, reject) => health.check({ service }, (e, r) => (e ? reject(e) : resolve(r))));
    assert.equal(res.status, "SERVING", kind);
  }
  health.close();
  assert.equal(await stopped(child), 0, output());
});

test("dev nodes: start from their manifests, serve their stages under the pod's name", async () => {
  for (const name of ["framefarm-node-encode", "framefarm-node-denoise"]) {
    const { c, env } = container(name);
    const pod = `${name}-5f6b7c8d9-abcde`;
    const { child, output } = start(c, env, pod);
    await waitFor(name, () => /serving/.test(output()), child, output);
    const expected = env.get("FRAMEFARM_STAGES")!.split(",").flatMap((g) => STAGE_GROUPS[g] ?? []);
    // Nodes log JSON lines (pino): the one announcing what it serves.
    const serving = output().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { msg?: string; nodeId?: string; stages?: string[] }).find((e) => e.msg === "node serving");
    assert.deepEqual({ nodeId: serving?.nodeId, stages: serving?.stages }, { nodeId: pod, stages: expected }, output());
    assert.equal(await stopped(child), 0, output());
  }
});
