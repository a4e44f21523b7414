/**
 * `framefarm cluster`: a whole farm as local processes on loopback: nats-server, an S3 server,
 * the coordinator (in this process) and node processes (one text/image/VAE node plus
 * --denoise-nodes denoise nodes by default; `--coordinators 2` adds a standby coordinator in this process,
 * with its own gRPC and dashboard ports, that takes over dispatching if the first stops). Prints `dashboard on http://HOST:PORT`, then
 * `gRPC listening on HOST:PORT` once jobs are accepted; SIGINT/SIGTERM stops everything it started.
 * NATS admits only the farm's users (shared/farm/nats-permissions.ts), with passwords made up
 * for this run: the coordinator, and one user per kind of node with the rights of its stages
 * alone. They are written to DATA/nats-users.json (this user only), whose path is printed.
 */
import { randomBytes } from "node:crypto";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { FarmError } from "../../shared/errors.js";
import { LOOPBACK, startNatsServer, startS3Server, type LocalServer } from "./local-servers.js";
import {
  DEFAULT_HTTP_PORT,
  SECURITY_OPTIONS,
  leaseOptions,
  parsePort,
  retentionOptions,
  securityOptions,
  startCoordinator,
  type RunningCoordinator,
} from "./coordinator.js";
import { TRACING_OPTIONS, startProcessTracing, stopParts, untilSignal, type FarmConnection } from "./farm-options.js";
import { createLogger } from "../../shared/log/logger.js";
import { stopGraceMs } from "../../shared/shutdown.js";
import { defaultBundleDir } from "./defaults.js";
import { natsAuthorizationConfig, type NatsUser } from "../../shared/farm/nats-permissions.js";
import type { NatsCredentials } from "../../shared/bus/nats-bus.js";
import { parseStages } from "../../gpu-node/main.js";
import { nodeProcessEnv } from "../../gpu-node/malloc-env.js";
import { refuseNodeVaeTiling } from "../../shared/job/vae-tiling-env.js";

const cliMain = path.join(path.dirname(fileURLToPath(import.meta.url)), "main.js");

/** The file `cluster` writes its NATS users' credentials to, in its data folder. */
export const NATS_USERS_FILE = "nats-users.json";

/** The NATS user of nodes started with these stage groups (`text,image,vae` -> node-text-image-vae). */
export const nodeNatsUser = (stages: string): string => `node-${stages.replace(/,/g, "-")}`;

/** The farm's NATS users for a coordinator and nodes of these stage groups, with fresh passwords. */
export function clusterNatsUsers(nodeStages: readonly string[]): NatsUser[] {
  const password = (): string => randomBytes(24).toString("hex");
  return [
    { user: "coordinator", password: password(), role: { kind: "coordinator" } },
    ...[...new Set(nodeStages)].map((stages): NatsUser => ({
      user: nodeNatsUser(stages),
      password: password(),
      role: { kind: "node", stages: parseStages(stages) },
    })),
  ];
}

const credentialsOf = (u: NatsUser): NatsCredentials => ({ user: u.user, password: u.password as string });

function startNode(
  conn: FarmConnection,
  nats: NatsCredentials,
  id: string,
  stages: string,
  bundle: string,
  ep: string,
  otlpEndpoint: string | undefined,
): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      cliMain,
      "node",
      "--nats",
      conn.nats,
      "--s3",
      `${conn.s3.host}:${conn.s3.port}`,
      "--bucket",
      conn.s3.bucket,
      "--stages",
      stages,
      "--bundle",
      bundle,
      "--ep",
      ep,
      "--id",
      id,
      // The OTEL_* variables reach the nodes with the rest of this process's environment.
      ...(otlpEndpoint !== undefined ? ["--otlp-endpoint", otlpEndpoint] : []),
    ],
    {
      stdio: ["ignore", "inherit", "inherit"],
      // In the environment, not the arguments, which anyone on the machine can list.
      // glibc malloc settings that keep a node's RSS flat (gpu-node/malloc-env.ts).
      env: nodeProcessEnv({ ...process.env, FRAMEFARM_NATS_USER: nats.user, FRAMEFARM_NATS_PASSWORD: nats.password }),
    },
  );
  return child;
}

export async function clusterCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      port: { type: "string" },
      "http-port": { type: "string" },
      nodes: { type: "string" },
      "denoise-nodes": { type: "string" },
      bundle: { type: "string" },
      ep: { type: "string" },
      data: { type: "string" },
      coordinators: { type: "string" },
      "lease-ttl-ms": { type: "string" },
      "retain-jobs": { type: "string" },
      ...SECURITY_OPTIONS,
      ...TRACING_OPTIONS,
    },
  });
  const nodes = Number(values.nodes ?? 1);
  const denoiseNodes = Number(values["denoise-nodes"] ?? 2);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 64)
    throw new FarmError("INVALID_ARGUMENT", `--nodes must be 1..64, got ${values.nodes}`);
  if (!Number.isInteger(denoiseNodes) || denoiseNodes < 0 || denoiseNodes > 64)
    throw new FarmError("INVALID_ARGUMENT", `--denoise-nodes must be 0..64, got ${values["denoise-nodes"]}`);
  const coordinators = Number(values.coordinators ?? 1);
  if (coordinators !== 1 && coordinators !== 2)
    throw new FarmError("INVALID_ARGUMENT", `--coordinators must be 1 or 2, got ${values.coordinators}`);
  // The nodes inherit this environment: refused here, before any server starts.
  refuseNodeVaeTiling();
  const bundle = path.resolve(values.bundle ?? defaultBundleDir());
  const ep = values.ep ?? "cpu";
  const otlpEndpoint = values["otlp-endpoint"];
  const log = createLogger("cluster");
  // The coordinators run in this process: their spans go out as framefarm-coordinator's.
  const tracing = await startProcessTracing(
    "framefarm-coordinator",
    otlpEndpoint,
    `${os.hostname()}:${process.pid}`,
    log,
  );
  const ownData = values.data === undefined;
  const data = values.data ?? (await mkdtemp(path.join(os.tmpdir(), "framefarm-cluster-")));
  const servers: LocalServer[] = [];
  const children: ChildProcess[] = [];
  const grace = stopGraceMs();
  // Children stop within their own grace (+2 s deadline); past that they are killed. A child that
  // already exited by a signal has exitCode null: waiting for its "exit" hung forever before.
  const stopChildren = async (): Promise<void> => {
    const running = children.filter((c) => c.exitCode === null && c.signalCode === null);
    const exits = running.map(
      (c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once("exit", () => r()))),
    );
    for (const c of running) c.kill("SIGTERM");
    const kill = setTimeout(
      () => running.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill("SIGKILL")),
      grace + 3_000,
    );
    await Promise.all(exits);
    clearTimeout(kill);
  };
  const stopAll = async (): Promise<void> => {
    await stopChildren();
    await Promise.all(servers.map((s) => s.stop()));
    if (ownData) await rm(data, { recursive: true, force: true });
  };
  // With one general node and no denoise nodes, the general node denoises too.
  const general = denoiseNodes === 0 ? "all" : "text,image,vae";
  const users = clusterNatsUsers(denoiseNodes === 0 ? [general] : [general, "denoise"]);
  const userOf = (stages: string): NatsCredentials =>
    credentialsOf(users.find((u) => u.user === nodeNatsUser(stages))!);
  try {
    const usersFile = path.join(data, NATS_USERS_FILE);
    await writeFile(
      usersFile,
      `${JSON.stringify(
        Object.fromEntries(users.map((u) => [u.user, { password: u.password, ...u.role }])),
        null,
        2,
      )}\n`,
      { mode: 0o600 },
    );
    const nats = await startNatsServer(path.join(data, "nats"), undefined, {
      authorization: natsAuthorizationConfig(users),
    });
    servers.push(nats);
    const s3 = await startS3Server(path.join(data, "s3"));
    servers.push(s3);
    const conn: FarmConnection = {
      nats: `nats://${nats.host}:${nats.port}`,
      natsCredentials: credentialsOf(users[0]!),
      s3: { host: s3.host, port: s3.port, tls: false, accessKey: "S3RVER", secretKey: "S3RVER", bucket: "framefarm" },
    };
    const security = {
      ...(await securityOptions(values)),
      ...leaseOptions(values["lease-ttl-ms"]),
      ...retentionOptions(values["retain-jobs"]),
    };
    const coordinator = await startCoordinator(
      conn,
      bundle,
      {
        host: LOOPBACK,
        port: parsePort("--port", values.port, 0),
        httpPort: parsePort("--http-port", values["http-port"], DEFAULT_HTTP_PORT),
      },
      security,
    );
    let standby: RunningCoordinator | undefined;
    if (coordinators === 2) {
      standby = await startCoordinator(conn, bundle, { host: LOOPBACK, port: 0, httpPort: 0 }, security);
      process.stdout.write(
        `standby coordinator: gRPC on ${LOOPBACK}:${standby.port}, dashboard on http://${LOOPBACK}:${standby.httpPort}\n`,
      );
    }
    for (let i = 0; i < nodes; i++)
      children.push(startNode(conn, userOf(general), `node-${i}`, general, bundle, ep, otlpEndpoint));
    for (let i = 0; i < denoiseNodes; i++)
      children.push(startNode(conn, userOf("denoise"), `denoise-${i}`, "denoise", bundle, ep, otlpEndpoint));
    process.stdout.write(`NATS on ${conn.nats}, S3 on ${s3.host}:${s3.port} (bucket ${conn.s3.bucket})\n`);
    process.stdout.write(
      `NATS users in ${usersFile} (coordinator: every right; ${users
        .slice(1)
        .map((u) => u.user)
        .join(", ")}: their stages only)\n`,
    );
    process.stdout.write(`dashboard on http://${LOOPBACK}:${coordinator.httpPort}\n`);
    process.stdout.write(`gRPC listening on ${LOOPBACK}:${coordinator.port}\n`);
    // Its own deadline covers the children's (grace + 3 s) and the servers' (5 s) stops.
    await untilSignal(grace + 8_000);
    // Nodes first hear the signal (from the process group or from here) while NATS still runs, so
    // they can finish or hand back their tasks; the coordinator stops meanwhile.
    await Promise.all([stopChildren(), coordinator.stop(), standby?.stop()]);
  } finally {
    await stopAll();
    await stopParts(log, [{ name: "tracing", run: () => tracing.shutdown() }]);
  }
  return 0;
}
