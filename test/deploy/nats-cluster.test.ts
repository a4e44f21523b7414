/**
 * The gpu overlay's NATS, as configured: its rendered nats.conf and nats-auth.conf (only addresses,
 * ports and paths changed for loopback; passwords from the environment, as the Secret gives them)
 * run by three real nats-servers, probed healthy on the manifest's probe path. The farm's bus, given the overlay's FRAMEFARM_NATS_REPLICAS, creates its queues and KV
 * buckets with that many replicas, and a queue keeps working after one server is killed.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { LOOPBACK, freePort } from "../../coordinator/cli/local-servers.js";
import { NatsBus, streamOf } from "../../shared/bus/nats-bus.js";
import type { Consumer } from "../../shared/bus/bus.js";
import { render } from "./support/render.js";
import { byName, generated, podSpecs } from "./support/query.js";

const objects = render("overlays/gpu");
const natsFiles = generated(objects, "ConfigMap", "nats-config")!["data"] as Record<string, string>;
const conf = natsFiles["nats.conf"]!;
/** What the framefarm-nats Secret would hold: a password per user that nats-auth.conf names. */
const passwords = Object.fromEntries(
  [...natsFiles["nats-auth.conf"]!.matchAll(/password: \$(NATS_PASSWORD_\w+)/g)].map((m) => [
    m[1]!,
    `${m[1]}-test-secret`,
  ]),
);
const coordinator = { user: "coordinator", password: passwords["NATS_PASSWORD_COORDINATOR"]! };
const replicas = Number(
  (generated(objects, "ConfigMap", "framefarm-settings")!["data"] as Record<string, string>)["FRAMEFARM_NATS_REPLICAS"],
);
const natsContainer = podSpecs(byName(objects, "StatefulSet", "nats"))[0]!.containers[0]!;
const healthPath = natsContainer.startupProbe!.httpGet!.path;
const servers = (byName(objects, "StatefulSet", "nats")["spec"] as { replicas: number }).replicas;

interface Server {
  client: number;
  http: number;
  cluster: number;
  child?: ChildProcess;
}
let dir: string;
const nodes: Server[] = [];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, fn: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(200);
  }
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-nats-cluster-"));
  for (let i = 0; i < servers; i++)
    nodes.push({ client: await freePort(), http: await freePort(), cluster: await freePort() });
  for (const [i, n] of nodes.entries()) {
    const local = conf
      .replace(/^port:\s*\d+$/m, `host: ${LOOPBACK}\nport: ${n.client}`)
      .replace(/^http_port:\s*\d+$/m, `http: "${LOOPBACK}:${n.http}"`)
      .replace(/^(\s+port:\s*)\d+$/m, `$1${n.cluster}\n  host: ${LOOPBACK}`)
      .replace(/^pid_file:.*$/m, `pid_file: "${path.join(dir, `nats-${i}.pid`)}"`)
      .replace(/store_dir:.*$/m, `store_dir: "${path.join(dir, `data-${i}`)}"`)
      .replace(/max_file_store:.*$/m, "max_file_store: 1GB")
      .replace(
        /nats:\/\/nats-(\d+)\.[\w.-]+:\d+/g,
        (_m, k: string) => `nats://${LOOPBACK}:${nodes[Number(k)]!.cluster}`,
      );
    await mkdir(path.join(dir, `data-${i}`), { recursive: true });
    const serverDir = path.join(dir, `server-${i}`);
    await mkdir(serverDir, { recursive: true });
    const file = path.join(serverDir, "nats.conf");
    await writeFile(file, local);
    await writeFile(path.join(serverDir, "nats-auth.conf"), natsFiles["nats-auth.conf"]!);
    n.child = spawn(process.env["NATS_SERVER_BIN"] ?? "nats-server", ["-c", file], {
      env: { ...process.env, POD_NAME: `nats-${i}`, ...passwords },
      stdio: "ignore",
    });
  }
  for (const n of nodes)
    await until(`nats ${n.http} healthy`, async () => (await fetch(`http://${LOOPBACK}:${n.http}${healthPath}`)).ok);
  // The probe passes once JetStream is on; the cluster also needs a metadata leader (full /healthz).
  for (const n of nodes)
    await until(
      `nats ${n.http} in a JetStream cluster`,
      async () => (await fetch(`http://${LOOPBACK}:${n.http}/healthz`)).ok,
    );
});

after(async () => {
  for (const n of nodes) if (n.child && n.child.exitCode === null) n.child.kill("SIGKILL");
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("gpu NATS: streams and KV buckets get the overlay's replicas; a queue survives losing a server", async () => {
  assert.equal(replicas, servers, "one replica per server");
  const last = nodes.at(-1)!;
  const url = `nats://${LOOPBACK}:${last.client}`;
  await assert.rejects(NatsBus.connect(url, "anonymous"), /UNAUTHENTICATED|refused/, "only the farm's users get in");
  const bus = await NatsBus.connect(url, "deploy-test", replicas, { credentials: coordinator });
  const nc = await connect({ servers: url, user: coordinator.user, pass: coordinator.password });
  try {
    await until("JetStream cluster ready", async () => {
      await bus.queues.ensure("denoise");
      return true;
    });
    await until("KV bucket created", async () => {
      await bus.kv("jobs");
      return true;
    });
    const jsm = await jetstreamManager(nc);
    const stream = await jsm.streams.info(streamOf("denoise"));
    assert.equal(stream.config.num_replicas, replicas);
    assert.equal(stream.cluster?.replicas?.length, replicas - 1);
    assert.equal((await jsm.streams.info("KV_jobs")).config.num_replicas, replicas);

    await bus.queues.enqueue("denoise", new TextEncoder().encode("before"));
    nodes[0]!.child!.kill("SIGKILL");
    await until("publish after losing a server", async () => {
      await bus.queues.enqueue("denoise", new TextEncoder().encode("after"), "after-1");
      return true;
    });
    const got: string[] = [];
    // Creating a consumer needs the JetStream metadata leader, re-elected if the lost server led.
    let consumer: Consumer | undefined;
    await until(
      "consumer created after losing a server",
      async () => {
        consumer = await bus.queues.consume(
          "denoise",
          { name: "stage-denoise", ackWaitMs: 30_000, maxDeliver: 3 },
          async (d) => {
            if (!got.includes(new TextDecoder().decode(d.data))) got.push(new TextDecoder().decode(d.data));
            d.ack();
          },
        );
        return true;
      },
      60_000,
    );
    await until("both tasks delivered", async () => got.length >= 2);
    await consumer!.stop();
    assert.deepEqual(got.sort(), ["after", "before"]);
  } finally {
    await nc.close();
    await bus.close();
  }
});
