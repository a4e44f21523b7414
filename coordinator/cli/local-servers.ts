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
      const s = net.connect(port, LOOPBACK, () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new FarmError(
    "DEADLINE_EXCEEDED",
    `${what} did not listen on ${LOOPBACK}:${port} within ${timeoutMs} ms: ${log()}`,
  );
}

async function startProcess(what: string, command: string, args: string[], port: number): Promise<LocalServer> {
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
  await waitForPort(port, child, what, 15_000, () => output.trim().split("\n").slice(-5).join(" | "));
  const exited = new Promise<void>((resolve) =>
    child.exitCode !== null ? resolve() : child.once("exit", () => resolve()),
  );
  return {
    host: LOOPBACK,
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

export async function startS3Server(dataDir: string, port?: number): Promise<LocalServer> {
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
    [bin, "-d", dataDir, "-a", LOOPBACK, "-p", String(p), "--silent"],
    p,
  );
}

/**
 * nats-server with JetStream storing in storeDir. With `authorization` (a config block, from
 * shared/farm/nats-permissions.ts) it admits only those users, with their permissions: the block
 * goes into a config file beside storeDir, readable by this user alone (it may hold passwords).
 */
export async function startNatsServer(
  storeDir: string,
  port?: number,
  options: { authorization?: string } = {},
): Promise<LocalServer> {
  await mkdir(storeDir, { recursive: true });
  const p = port ?? (await freePort());
  const args = ["-a", LOOPBACK, "-p", String(p), "-js", "-sd", storeDir];
  if (options.authorization !== undefined) {
    const file = `${storeDir.replace(/\/+$/, "")}.conf`;
    await writeFile(file, options.authorization, { mode: 0o600 });
    args.push("-c", file);
  }
  return startProcess("nats-server", process.env["NATS_SERVER_BIN"] ?? "nats-server", args, p);
}
