/**
 * The overlays' coordinator and node containers, started as the image would start them
 * (`node <bin> <args>` with the environment Kubernetes assembles from the manifests, downward-API
 * values and the kubelet's $(VAR) expansion of args included) against a real nats-server and S3
 * server on loopback; NATS admits only the users of the base's nats-auth.conf. Only the addresses
 * (Service DNS names), the S3 credentials (the local S3 server's), the NATS passwords (made up
 * here for the keys the manifests name in the framefarm-nats Secret) and, for the coordinator, the ports (50051 and 8080 may be taken on a shared machine;
 * the manifest's ports are checked in code-agreement.test.ts) are replaced; for gpu also what
 * needs a GPU host: the bundle (the tiny one), the execution provider (cpu) and the token Secret's
 * mount (a local folder with a file written as deploy/README.md writes the Secret).
 * The coordinator must answer the kubelet's gRPC probe, as the manifest writes it, with SERVING
 * and the dashboard on its HTTP port, /metrics where the scrape annotations point (in gpu only
 * with an operator's token); the nodes must come up serving the stages the manifest names, under
 * the pod's name (in gpu, with the host's name as their device, as the dashboard shows it).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { credentials, loadPackageDefinition } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import {
  LOOPBACK,
  S3_ACCESS_KEY,
  S3_SECRET_KEY,
  freePort,
  startNatsServer,
  startS3Server,
  type LocalServer,
} from "../../coordinator/cli/local-servers.js";
import { STAGE_GROUPS } from "../../gpu-node/main.js";
import { cliPath, repoRoot, tinyBundleDir } from "../support/paths.js";
import { render, type K8sObject, type Target } from "./support/render.js";
import { byKind, containerEnv, podSpecs, type Container, type PodSpec } from "./support/query.js";

let dir: string;
let nats: LocalServer;
let s3: LocalServer;
const children: ChildProcess[] = [];

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-deploy-"));
  nats = await startNatsServer(path.join(dir, "nats"), undefined, {
    // The Secret's passwords, as nats-server would read them from the pod's environment.
    authorization: natsAuth.replace(/\$(NATS_PASSWORD_\w+)/g, (_m, key: string) => JSON.stringify(natsPassword(key))),
  });
  s3 = await startS3Server(path.join(dir, "s3"));
});

after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  await nats?.stop();
  await s3?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const rendered = new Map<Target, K8sObject[]>([
  ["overlays/dev", render("overlays/dev")],
  ["overlays/gpu", render("overlays/gpu")],
]);
const natsAuth = (
  byKind(rendered.get("overlays/dev")!, "ConfigMap").find((o) => o.metadata.name.startsWith("nats-config"))![
    "data"
  ] as Record<string, string>
)["nats-auth.conf"]!;
/** The password this test gives a framefarm-nats Secret key. */
const natsPassword = (key: string): string => `${key.toLowerCase()}-test-password`;
function container(target: Target, deployment: string): { c: Container; env: Map<string, string>; pod: PodSpec } {
  const objects = rendered.get(target)!;
  const d = byKind(objects, "Deployment").find((o) => o.metadata.name === deployment)!;
  const pod = podSpecs(d)[0]!;
  const c = pod.containers[0]!;
  return { c, env: containerEnv(objects, c), pod };
}

/** What the downward API would give a pod on a host. */
interface Pod {
  name: string;
  host: string;
}

/**
 * The container's process: the image's ENTRYPOINT is `node <bin>` (code-agreement.test.ts), the
 * args expanded as the kubelet expands them ($(VAR) from the container's environment).
 */
function start(c: Container, env: Map<string, string>, pod: Pod): { child: ChildProcess; output: () => string } {
  const localEnv = new Map(env);
  localEnv.set("FRAMEFARM_NATS", `nats://${nats.host}:${nats.port}`);
  localEnv.set("FRAMEFARM_S3", `${s3.host}:${s3.port}`);
  localEnv.set("FRAMEFARM_S3_ACCESS_KEY", S3_ACCESS_KEY);
  localEnv.set("FRAMEFARM_S3_SECRET_KEY", S3_SECRET_KEY);
  const natsKey = c.env?.find((e) => e.name === "FRAMEFARM_NATS_PASSWORD")?.valueFrom?.secretKeyRef?.key;
  assert.ok(natsKey, `${c.name}: its NATS password comes from a Secret`);
  localEnv.set("FRAMEFARM_NATS_PASSWORD", natsPassword(natsKey));
  const fields: Record<string, string> = { "<fieldRef:metadata.name>": pod.name, "<fieldRef:spec.nodeName>": pod.host };
  for (const [k, v] of localEnv) if (v in fields) localEnv.set(k, fields[v]!);
  for (const [k, v] of localEnv) assert.doesNotMatch(v, /^<.*>$/, `${k} has no value outside Kubernetes`);
  const args = (c.args ?? []).map((a) =>
    a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => localEnv.get(name) ?? m),
  );
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FRAMEFARM_")));
  const child = spawn(process.execPath, [cliPath(), ...args], {
    cwd: repoRoot(),
    env: { ...inherited, ...Object.fromEntries(localEnv) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let out = "";
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (out += b.toString()));
  return { child, output: () => out };
}

async function waitFor(
  what: string,
  check: () => boolean,
  child: ChildProcess,
  output: () => string,
  ms = 60_000,
  poll?: () => Promise<void>,
): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    await poll?.();
    if (check()) return;
    if (child.exitCode !== null) throw new Error(`${what}: the process exited ${child.exitCode}: ${output()}`);
    if (Date.now() > deadline) throw new Error(`${what}: timed out: ${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopped(child: ChildProcess): Promise<number | null> {
  child.kill("SIGTERM");
  return child.exitCode !== null
    ? child.exitCode
    : new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

type HealthClient = {
  check(r: { service: string }, cb: (e: Error | null, r: { status: string }) => void): void;
  close(): void;
};

async function probeGrpc(c: Container, port: number): Promise<void> {
  const healthProto = path.join(
    repoRoot(),
    "node_modules",
    "grpc-health-check",
    "proto",
    "health",
    "v1",
    "health.proto",
  );
  const def = loadPackageDefinition(loadSync(healthProto, { enums: String })) as unknown as {
    grpc: { health: { v1: { Health: new (a: string, c: unknown) => HealthClient } } };
  };
  const health = new def.grpc.health.v1.Health(`${LOOPBACK}:${port}`, credentials.createInsecure());
  try {
    for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"] as const) {
      const service = c[kind]?.grpc?.service ?? "";
      const res = await new Promise<{ status: string }>((resolve, reject) =>
        health.check({ service }, (e, r) => (e ? reject(e) : resolve(r))),
      );
      assert.equal(res.status, "SERVING", kind);
    }
  } finally {
    health.close();
  }
}

/** Where the pod's prometheus.io/* annotations send a scraper (the port replaced for loopback). */
function scrapeUrl(target: Target, localHttpPort: number): string {
  const d = byKind(rendered.get(target)!, "Deployment").find((o) => o.metadata.name === "framefarm-coordinator")!;
  const a =
    (d["spec"] as { template: { metadata: { annotations?: Record<string, string> } } }).template.metadata.annotations ??
    {};
  return `${a["prometheus.io/scheme"] ?? "http"}://${LOOPBACK}:${localHttpPort}${a["prometheus.io/path"] ?? "/metrics"}`;
}

/** Starts the overlay's coordinator on free ports; resolves once both listen. */
async function startCoordinator(
  target: Target,
  adjust: (env: Map<string, string>) => void = () => {},
): Promise<{ c: Container; port: number; httpPort: number; child: ChildProcess; output: () => string }> {
  const { c, env } = container(target, "framefarm-coordinator");
  const port = await freePort();
  const httpPort = await freePort();
  env.set("FRAMEFARM_PORT", String(port));
  env.set("FRAMEFARM_HTTP_PORT", String(httpPort));
  adjust(env);
  const { child, output } = start(c, env, { name: "framefarm-coordinator-7c9d4-x2x7q", host: "cpu-host-1" });
  await waitFor("coordinator", () => /dashboard on http/.test(output()), child, output);
  assert.match(output(), new RegExp(`gRPC listening on ${env.get("FRAMEFARM_HOST")!.replace(/\./g, "\\.")}:${port}`));
  assert.match(
    output(),
    new RegExp(`dashboard on http://${env.get("FRAMEFARM_HOST")!.replace(/\./g, "\\.")}:${httpPort}`),
  );
  return { c, port, httpPort, child, output };
}

test("dev coordinator: starts from its manifest, answers its gRPC probe with SERVING, serves the dashboard and /metrics without a token", async () => {
  const { c, port, httpPort, child, output } = await startCoordinator("overlays/dev");
  await probeGrpc(c, port);
  // dev runs open (no token file): the page and the metrics need no token.
  const page = await fetch(`http://${LOOPBACK}:${httpPort}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /text\/html/);
  const metrics = await fetch(scrapeUrl("overlays/dev", httpPort));
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /^# HELP framefarm_/m);
  assert.equal(await stopped(child), 0, output());
});

test("dev nodes: start from their manifests, serve their stages under the pod's name", async () => {
  for (const name of ["framefarm-node-encode", "framefarm-node-denoise"]) {
    const { c, env } = container("overlays/dev", name);
    const pod = `${name}-5f6b7c8d9-abcde`;
    const { child, output } = start(c, env, { name: pod, host: "cpu-host-1" });
    await waitFor(name, () => /serving/.test(output()), child, output);
    const expected = env
      .get("FRAMEFARM_STAGES")!
      .split(",")
      .flatMap((g) => STAGE_GROUPS[g] ?? []);
    // Nodes log JSON lines (pino): the one announcing what it serves.
    const serving = output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { msg?: string; nodeId?: string; stages?: string[] })
      .find((e) => e.msg === "node serving");
    assert.deepEqual({ nodeId: serving?.nodeId, stages: serving?.stages }, { nodeId: pod, stages: expected }, output());
    assert.equal(await stopped(child), 0, output());
  }
});

test("gpu coordinator and nodes: tokens from the mounted Secret close the dashboard to all but operators and /metrics to all but operators and the scraper; nodes show the host as their device", async () => {
  // The Secret as deploy/README.md creates it: one file, `tenant:token` lines, an operator and the scraper.
  const tokens = {
    ops: randomBytes(32).toString("hex"),
    prometheus: randomBytes(32).toString("hex"),
    alice: randomBytes(32).toString("hex"),
  };
  const coordinator = container("overlays/gpu", "framefarm-coordinator");
  const file = coordinator.env.get("FRAMEFARM_TOKENS_FILE")!;
  const mount = coordinator.c.volumeMounts!.find((m) => path.posix.dirname(file) === m.mountPath)!;
  const secretDir = path.join(dir, "secret-tokens");
  await mkdir(secretDir);
  await writeFile(
    path.join(secretDir, path.posix.relative(mount.mountPath, file)),
    Object.entries(tokens)
      .map(([t, k]) => `${t}:${k}`)
      .join("\n") + "\n",
  );
  const onLoopback = (env: Map<string, string>): void => {
    env.set("FRAMEFARM_BUNDLE", tinyBundleDir()); // the init step's copy of the real bundle
    env.set("FRAMEFARM_EP", "cpu"); // no GPU here
  };
  const { c, port, httpPort, child, output } = await startCoordinator("overlays/gpu", (env) => {
    onLoopback(env);
    env.set("FRAMEFARM_TOKENS_FILE", path.join(secretDir, path.posix.relative(mount.mountPath, file)));
  });
  // Health checking stays open: the kubelet sends no token.
  await probeGrpc(c, port);
  const base = `http://${LOOPBACK}:${httpPort}`;
  const bearer = (t: string): RequestInit => ({ headers: { authorization: `Bearer ${t}` } });
  // The page's own files load without a token (it then asks for one).
  assert.equal((await fetch(`${base}/`)).status, 200);
  const operators = coordinator.env.get("FRAMEFARM_OPERATORS")!.split(",");
  const scrapers = coordinator.env.get("FRAMEFARM_METRICS_TENANTS")!.split(",");
  assert.ok(
    scrapers.includes("prometheus") && !operators.includes("prometheus"),
    "the scraper's tenant has the metrics role, not an operator's (deploy/README.md)",
  );
  assert.equal(
    (await fetch(`${base}/api/state`, bearer(tokens.prometheus))).status,
    401,
    "the scraper's token opens /metrics alone",
  );
  assert.equal((await fetch(scrapeUrl("overlays/gpu", httpPort))).status, 401, "/metrics without a token");
  assert.equal(
    (await fetch(scrapeUrl("overlays/gpu", httpPort), bearer(tokens.alice))).status,
    401,
    "/metrics with a tenant's token that is not an operator's",
  );
  const metrics = await fetch(scrapeUrl("overlays/gpu", httpPort), bearer(tokens.prometheus));
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /^# HELP framefarm_/m);

  const nodes: { name: string; child: ChildProcess; output: () => string }[] = [];
  for (const name of ["framefarm-node-encode", "framefarm-node-denoise"]) {
    const { c: nc, env } = container("overlays/gpu", name);
    assert.equal(env.get("FRAMEFARM_TOKENS_FILE"), undefined, "nodes never see the tokens");
    onLoopback(env);
    nodes.push({
      name: `${name}-5f6b7c8d9-abcde`,
      ...start(nc, env, { name: `${name}-5f6b7c8d9-abcde`, host: "gpu-host-3" }),
    });
  }
  // The dashboard's view of them, read as an operator.
  type State = { nodes: { id: string; device: string; status: string }[] };
  let state: State = { nodes: [] };
  await waitFor(
    "nodes on the dashboard",
    () => nodes.every((n) => state.nodes.some((v) => v.id === n.name && v.status === "active")),
    child,
    () => `${output()}\n${nodes.map((n) => n.output()).join("\n")}\n${JSON.stringify(state.nodes)}`,
    60_000,
    async () => {
      const res = await fetch(`${base}/api/state`, bearer(tokens.ops));
      assert.equal(res.status, 200);
      state = (await res.json()) as State;
    },
  );
  for (const n of nodes) {
    const { c: nc } = container("overlays/gpu", n.name.replace(/-5f6b7c8d9-abcde$/, ""));
    const device = nc.args?.[nc.args.indexOf("--device") + 1]?.replace("$(K8S_NODE_NAME)", "gpu-host-3");
    assert.ok(device?.includes("gpu-host-3"), "the device names the host (downward API spec.nodeName)");
    assert.equal(
      state.nodes.find((v) => v.id === n.name)?.device,
      device,
      `${n.name}: the dashboard shows the device the args give`,
    );
  }
  for (const n of nodes) assert.equal(await stopped(n.child), 0, n.output());
  assert.equal(await stopped(child), 0, output());
});
