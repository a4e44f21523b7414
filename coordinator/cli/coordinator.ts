/**
 * `framefarm coordinator`: the dispatcher, the public gRPC API and the admin dashboard (HTTP:
 * page, JSON API, server-sent events, /metrics), against NATS and S3.
 * `--tokens FILE` (FRAMEFARM_TOKENS_FILE) turns on bearer-token authentication with tenants (the
 * dashboard then admits the tokens of the `--operators` tenants only); `--tls-cert FILE --tls-key
 * FILE` (PEM) serves gRPC over TLS.
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { Dispatcher } from "../dispatch/dispatcher.js";
import { JobService } from "../api/job-service.js";
import { startApiServer, type ApiServerOptions } from "../api/server.js";
import { TokenAuth, DEFAULT_TENANT } from "../auth/tokens.js";
import { FarmError } from "../../shared/errors.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { bundleDigest } from "../../gpu-node/runtime/bundle-digest.js";
import { createLogger } from "../../shared/log/logger.js";
import { startDashboard } from "../dashboard/dashboard.js";
import {
  FARM_OPTIONS,
  connectFarm,
  farmConnection,
  stopParts,
  untilSignal,
  type FarmConnection,
} from "./farm-options.js";
import { defaultBundleDir } from "./defaults.js";
import path from "node:path";

/** The gRPC API's port when neither --port nor FRAMEFARM_PORT says otherwise. */
export const DEFAULT_API_PORT = 50051;

export interface RunningCoordinator {
  port: number;
  httpPort: number;
  stop(): Promise<void>;
}

export interface CoordinatorAddresses {
  host: string;
  /** gRPC port (0: any free one). */
  port: number;
  /** Dashboard HTTP port (0: any free one). */
  httpPort: number;
}

export interface CoordinatorSecurity {
  auth?: TokenAuth;
  tls?: ApiServerOptions["tls"];
  /** Tenants whose tokens open the dashboard (it shows every tenant's jobs). */
  operators?: string[];
}

export const DEFAULT_HTTP_PORT = 8080;

export function parsePort(flag: string, value: string | undefined, fallback: number): number {
  const n = Number(value ?? fallback);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new FarmError("INVALID_ARGUMENT", `${flag} must be a port number 0..65535, got ${value}`);
  return n;
}

export async function startCoordinator(
  conn: FarmConnection,
  bundleDir: string,
  at: CoordinatorAddresses,
  security: CoordinatorSecurity = {},
): Promise<RunningCoordinator> {
  const log = createLogger("coordinator");
  const { host } = at;
  const bundle = await openBundle(bundleDir);
  const auth = security.auth ?? TokenAuth.open();
  // Loud on purpose: an open farm must never be mistaken for a protected one.
  if (auth.isOpen)
    process.stderr.write(
      `WARNING: no tokens configured (--tokens FILE or FRAMEFARM_TOKENS_FILE): the gRPC API is OPEN to anyone who can reach ${host}; every caller is tenant "${DEFAULT_TENANT}"\n`,
    );
  else if (security.tls === undefined && !/^(127\.|localhost$|::1$)/.test(host))
    process.stderr.write(`WARNING: tokens travel in plaintext: serve TLS with --tls-cert and --tls-key\n`);
  const { bus, store } = await connectFarm(conn, "coordinator");
  const dispatcher = await Dispatcher.start(bus, store);
  const service = new JobService({
    bus,
    store,
    dispatcher,
    manifest: bundle.manifest,
    bundleName: path.basename(bundle.dir),
    bundleDigest: await bundleDigest(bundle),
    auth,
  });
  const api = await startApiServer(service, host, at.port, security.tls !== undefined ? { tls: security.tls } : {});
  const dashboard = await startDashboard({
    bus,
    store,
    dispatcher,
    host,
    port: at.httpPort,
    log,
    authorize: auth.operatorGate(security.operators ?? []),
    storeTraffic: () => store.traffic,
  });
  // Secure as it is (the dashboard shows every tenant's jobs), so a note rather than a warning.
  if (!auth.isOpen && (security.operators ?? []).length === 0)
    log.warn("no --operators tenants: the dashboard refuses every request");
  log.info({ grpcPort: api.port, httpPort: dashboard.port }, "coordinator serving");
  return {
    port: api.port,
    httpPort: dashboard.port,
    // Bounded whatever is gone already (NATS, the object store): see stopParts.
    stop: () =>
      stopParts(log, [
        { name: "dashboard", run: () => dashboard.stop() },
        { name: "gRPC API", run: () => api.stop() },
        { name: "dispatcher", run: () => dispatcher.stop() },
        { name: "NATS connection", run: () => bus.close() },
      ]),
  };
}

export const SECURITY_OPTIONS = {
  tokens: { type: "string" },
  operators: { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
} as const;

export async function coordinatorCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...FARM_OPTIONS,
      ...SECURITY_OPTIONS,
      bundle: { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      "http-port": { type: "string" },
    },
  });
  // Flags win over FRAMEFARM_HOST / FRAMEFARM_PORT / FRAMEFARM_HTTP_PORT (containers set those: deploy/k8s).
  const env = process.env;
  const host = values.host ?? env["FRAMEFARM_HOST"] ?? "127.0.0.1";
  const c = await startCoordinator(
    farmConnection(values),
    values.bundle ?? defaultBundleDir(),
    {
      host,
      port: parsePort("--port", values.port ?? env["FRAMEFARM_PORT"], DEFAULT_API_PORT),
      httpPort: parsePort("--http-port", values["http-port"] ?? env["FRAMEFARM_HTTP_PORT"], DEFAULT_HTTP_PORT),
    },
    await securityOptions(values),
  );
  process.stdout.write(`gRPC listening on ${host}:${c.port}${values["tls-cert"] !== undefined ? " (TLS)" : ""}\n`);
  process.stdout.write(`dashboard on http://${host}:${c.httpPort}\n`);
  await untilSignal();
  await c.stop();
  return 0;
}

/** --tokens / FRAMEFARM_TOKENS_FILE, --operators / FRAMEFARM_OPERATORS and --tls-cert / --tls-key as start-up settings. */
export async function securityOptions(values: {
  tokens?: string | undefined;
  operators?: string | undefined;
  "tls-cert"?: string | undefined;
  "tls-key"?: string | undefined;
}): Promise<CoordinatorSecurity> {
  const tokens = values.tokens ?? process.env["FRAMEFARM_TOKENS_FILE"];
  const out: CoordinatorSecurity = {};
  if (tokens !== undefined && tokens !== "") out.auth = await TokenAuth.fromFile(tokens);
  const operators = values.operators ?? process.env["FRAMEFARM_OPERATORS"];
  if (operators !== undefined && operators !== "")
    out.operators = operators
      .split(",")
      .map((t) => t.trim())
      .filter((t) => t !== "");
  const cert = values["tls-cert"];
  const key = values["tls-key"];
  if ((cert === undefined) !== (key === undefined))
    throw new FarmError("INVALID_ARGUMENT", "give both --tls-cert and --tls-key, or neither");
  if (cert !== undefined && key !== undefined) {
    const read = async (file: string, what: string): Promise<Buffer> =>
      readFile(file).catch((err: Error) => {
        throw new FarmError("NOT_FOUND", `${what} ${file} cannot be read: ${err.message}`, { cause: err });
      });
    out.tls = { cert: await read(cert, "TLS certificate"), key: await read(key, "TLS key") };
  }
  return out;
}
