/**
 * Real servers as local child processes on loopback, for `framefarm cluster` and the integration
 * tests: an S3 server (s3rver from npm: the MinIO server is in neither npm nor Debian) and NATS
 * with JetStream (Debian's nats-server, installed by deploy/local/install-servers.sh).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { mkdir, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";

export interface LocalServer {
  readonly host: string;
  readonly port: number;
  /** SIGTERM, then SIGKILL after a grace period; resolves when the process has exited. */
  stop(): Promise<void>;
  /** SIGKILL at once (fault injection). */
  kill(): void;
  readonly process: ChildProcess;
}

export const LOOPBACK = "127.0.0.1";
export const S3_ACCESS_KEY = "S3RVER";
export const S3_SECRET_KEY = "S3RVER";

/** A free TCP port on loopback (asked of the kernel, then released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, LOOPBACK, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(
  host: string,
  port: number,
  child: ChildProcess,
  what: string,
  timeoutMs: number,
  log: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null)
      throw new FarmError("UNAVAILABLE", `${what} exited with code ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, host, () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new FarmError(
    "DEADLINE_EXCEEDED",
    `${what} did not listen on ${host}:${port} within ${timeoutMs} ms: ${log()}`,
  );
}

async function startProcess(
  what: string,
  command: string,
  args: string[],
  port: number,
  host = LOOPBACK,
): Promise<LocalServer> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (b: Buffer): void => {
    output = (output + b.toString()).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const spawned = new Promise<void>((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", (err) =>
      reject(new FarmError("FAILED_PRECONDITION", `cannot start ${what} (${command}): ${err.message}`, { cause: err })),
    );
  });
  await spawned;
  await waitForPort(host, port, child, what, 15_000, () => output.trim().split("\n").slice(-5).join(" | "));
  const exited = new Promise<void>((resolve) =>
    child.exitCode !== null ? resolve() : child.once("exit", () => resolve()),
  );
  return {
    host,
    port,
    process: child,
    kill: () => void child.kill("SIGKILL"),
    stop: async () => {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

/** host: the address it listens on (default loopback; a fault test's service address). */
export async function startS3Server(dataDir: string, port?: number, host = LOOPBACK): Promise<LocalServer> {
  await mkdir(dataDir, { recursive: true });
  const p = port ?? (await freePort());
  const bin = path.join(
    path.dirname(createRequire(import.meta.url).resolve("s3rver/package.json")),
    "bin",
    "s3rver.js",
  );
  return startProcess(
    "S3 server (s3rver)",
    process.execPath,
    [bin, "-d", dataDir, "-a", host, "-p", String(p), "--silent"],
    p,
    host,
  );
}

/**
 * nats-server with JetStream storing in storeDir. With `authorization` (a config block, from
 * shared/farm/nats-permissions.ts) it admits only those users, with their permissions: the block
 * goes into a config file beside storeDir, readable by this user alone (it may hold passwords).
 * `host`: the address it listens on (default loopback).
 */
export async function startNatsServer(
  storeDir: string,
  port?: number,
  options: { authorization?: string; host?: string } = {},
): Promise<LocalServer> {
  await mkdir(storeDir, { recursive: true });
  const p = port ?? (await freePort());
  const host = options.host ?? LOOPBACK;
  const args = ["-a", host, "-p", String(p), "-js", "-sd", storeDir];
  if (options.authorization !== undefined) {
    const file = `${storeDir.replace(/\/+$/, "")}.conf`;
    await writeFile(file, options.authorization, { mode: 0o600 });
    args.push("-c", file);
  }
  return startProcess("nats-server", process.env["NATS_SERVER_BIN"] ?? "nats-server", args, p, host);
}

/** One server of a local JetStream cluster: its name, ports and store folder. */
export interface ClusterMember {
  readonly name: string;
  readonly port: number;
  readonly clusterPort: number;
  readonly monitorPort: number;
  readonly storeDir: string;
  server: LocalServer;
}

/**
 * A JetStream cluster of `size` Debian nats-servers on loopback (each with its own store folder,
 * client, route and monitoring ports, routes to the others, named `<clusterName>-<i>`), as the gpu
 * overlay runs three in Kubernetes. A member can be killed and started again on its ports and
 * store folder; clients given every URL (`urls`, comma-separated) reconnect to another. With
 * `authorization` (as startNatsServer takes it) every member admits only those users.
 */
export class LocalNatsCluster {
  private constructor(
    readonly members: ClusterMember[],
    private readonly clusterName: string,
    private readonly authorization: string | undefined,
  ) {}

  static async start(
    dir: string,
    size = 3,
    clusterName = "ff-nats",
    options: { authorization?: string } = {},
  ): Promise<LocalNatsCluster> {
    const specs: Omit<ClusterMember, "server">[] = [];
    for (let i = 0; i < size; i++)
      specs.push({
        name: `${clusterName}-${i}`,
        port: await freePort(),
        clusterPort: await freePort(),
        monitorPort: await freePort(),
        storeDir: path.join(dir, `nats-${i}`),
      });
    const c = new LocalNatsCluster([], clusterName, options.authorization);
    // All at once: a server whose routes are not up yet retries them.
    const servers = await Promise.all(specs.map((s) => c.spawnMember(s, specs)));
    specs.forEach((s, i) => c.members.push({ ...s, server: servers[i]! }));
    await c.waitReady();
    return c;
  }

  /** Every client URL, comma-separated (what `--nats` and FRAMEFARM_NATS take). */
  get urls(): string {
    return this.members.map((m) => `nats://${LOOPBACK}:${m.port}`).join(",");
  }

  private async spawnMember(
    s: Omit<ClusterMember, "server">,
    all: Omit<ClusterMember, "server">[],
  ): Promise<LocalServer> {
    await mkdir(s.storeDir, { recursive: true });
    const routes = all.filter((o) => o !== s).map((o) => `nats://${LOOPBACK}:${o.clusterPort}`);
    const config: string[] = [];
    if (this.authorization !== undefined) {
      const file = `${s.storeDir.replace(/\/+$/, "")}.conf`;
      await writeFile(file, this.authorization, { mode: 0o600 });
      config.push("-c", file);
    }
    return startProcess(
      `nats-server ${s.name}`,
      process.env["NATS_SERVER_BIN"] ?? "nats-server",
      [
        ...["-a", LOOPBACK, "-p", String(s.port), "-m", String(s.monitorPort), "-n", s.name],
        ...["-js", "-sd", s.storeDir, "--cluster_name", this.clusterName],
        ...["--cluster", `nats://${LOOPBACK}:${s.clusterPort}`, "--routes", routes.join(",")],
        ...config,
      ],
      s.port,
    );
  }

  /** Monitoring JSON of member i (`/connz`, `/jsz?...`, `/healthz`). */
  async monitor(i: number, pathAndQuery: string): Promise<unknown> {
    const res = await fetch(`http://${LOOPBACK}:${this.members[i]!.monitorPort}${pathAndQuery}`);
    if (!res.ok) throw new FarmError("UNAVAILABLE", `${this.members[i]!.name} ${pathAndQuery}: HTTP ${res.status}`);
    return res.json();
  }

  /**
   * Until every running member answers /healthz ok: JetStream has a metadata leader and the
   * member's streams are current (a restarted member has caught up).
   */
  async waitReady(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const [i, m] of this.members.entries()) {
      if (!this.running(i)) continue;
      for (;;) {
        const ok = await this.monitor(i, "/healthz").then(
          () => true,
          () => false,
        );
        if (ok) break;
        if (Date.now() > deadline)
          throw new FarmError("DEADLINE_EXCEEDED", `${m.name} not healthy within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  running(i: number): boolean {
    const p = this.members[i]!.server.process;
    return p.exitCode === null && p.signalCode === null;
  }

  /** The member a named client connection is on (from each server's /connz), or undefined. */
  async serverOf(clientName: string): Promise<number | undefined> {
    for (let i = 0; i < this.members.length; i++) {
      if (!this.running(i)) continue;
      const connz = (await this.monitor(i, "/connz?limit=4096").catch(() => ({}))) as {
        connections?: { name?: string }[];
      };
      if ((connz.connections ?? []).some((c) => c.name === clientName)) return i;
    }
    return undefined;
  }

  /** The member index of a server name (a stream's cluster.leader, say). */
  indexOf(serverName: string): number | undefined {
    const i = this.members.findIndex((m) => m.name === serverName);
    return i < 0 ? undefined : i;
  }

  /** SIGKILL member i; resolves when it has exited. */
  async kill(i: number): Promise<void> {
    const p = this.members[i]!.server.process;
    if (!this.running(i)) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGKILL");
    await exited;
  }

  /** Starts member i again on its ports and store folder (it rejoins and catches up). */
  async restart(i: number): Promise<void> {
    const all = this.members.map(({ server: _s, ...rest }) => rest);
    this.members[i]!.server = await this.spawnMember(all[i]!, all);
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.server.stop()));
  }
}
