/**
 * `framefarm coordinator`: the dispatcher, the public gRPC API and the admin dashboard (HTTP:
 * page, JSON API, server-sent events, /metrics), against NATS and S3.
 * `--tokens FILE` (FRAMEFARM_TOKENS_FILE) turns on bearer-token authentication with tenants (the
 * dashboard then admits the tokens of the `--operators` tenants only, /metrics those and the
 * `--metrics-tenants`, whose tokens open nothing else); the file is re-read when it changes and on
 * SIGHUP. `--tls-cert FILE --tls-key FILE` (PEM) serves gRPC over TLS. `--webhook-secret S
 * --webhook-allow host[:port],...` (FRAMEFARM_WEBHOOK_SECRET, FRAMEFARM_WEBHOOK_ALLOW) sends jobs'
 * webhooks (coordinator/webhooks).
 * Several coordinators may serve one farm: each serves the API, the one holding the leader lease
 * (coordinator/dispatch/leader-lease.ts) dispatches and sends webhooks, and another takes over
 * within `--lease-ttl-ms` (FRAMEFARM_LEASE_TTL_MS, default 5000) of the holder going silent.
 * `--retain-jobs 7d` (FRAMEFARM_RETAIN_JOBS; the default) removes finished jobs that long after they
 * end, with their objects (coordinator/dispatch/job-sweeper.ts).
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { Dispatcher } from "../dispatch/dispatcher.js";
import { JobService } from "../api/job-service.js";
import { startApiServer, type ApiServerOptions } from "../api/server.js";
import { TokenAuth, DEFAULT_TENANT } from "../auth/tokens.js";
import { watchTokenFile, type TokenFileWatcher } from "../auth/token-file.js";
import { FarmError } from "../../shared/errors.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { bundleDigest } from "../../gpu-node/runtime/bundle-digest.js";
import { createLogger } from "../../shared/log/logger.js";
import { startDashboard } from "../dashboard/dashboard.js";
import { historySampleMs } from "../dashboard/farm-history.js";
import { WebhookPolicy } from "../webhooks/policy.js";
import { WebhookDeliverer } from "../webhooks/deliverer.js";
import {
  FARM_OPTIONS,
  TRACING_OPTIONS,
  connectFarm,
  farmConnection,
  startProcessTracing,
  stopParts,
  untilSignal,
  type FarmConnection,
} from "./farm-options.js";
import { defaultBundleDir } from "./defaults.js";
import path from "node:path";
import os from "node:os";
import { randomBytes } from "node:crypto";
import { DEFAULT_LEASE_TTL_MS } from "../dispatch/leader-lease.js";
import { DEFAULT_RETAIN_MS } from "../dispatch/job-sweeper.js";
import { formatDuration, parseDuration } from "../../shared/duration.js";

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
  /** Where auth came from: re-read on change and on SIGHUP. */
  tokensFile?: string;
  /** Tenants whose tokens open the dashboard (it shows every tenant's jobs). */
  operators?: string[];
  /** Tenants whose tokens may scrape /metrics and do nothing else (no dashboard, no gRPC calls). */
  metricsTenants?: string[];
  /** With tokens, the highest priority a tenant that is not an operator gets (default 0). */
  tenantMaxPriority?: number;
  /** The most unfinished jobs per tenant (unlimited when absent). */
  maxQueuedPerTenant?: number;
  /** The most tasks per tenant on the queues or running at once (unlimited when absent). */
  maxRunningPerTenant?: number;
  /** Webhooks: the farm's secret (none: webhooks are refused) and the allowed host[:port] entries. */
  webhooks?: { secret?: string; allow: string[] };
  /** The leader lease's TTL in ms (DEFAULT_LEASE_TTL_MS when absent). */
  leaseTtlMs?: number;
  /** Finished jobs are removed this long after they end, in ms (DEFAULT_RETAIN_MS when absent). */
  retainJobsMs?: number;
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
  // Settings first: a bad one is refused before anything connects.
  const sampleMs = historySampleMs();
  const bundle = await openBundle(bundleDir);
  const auth = security.auth ?? TokenAuth.open();
  // Loud on purpose: an open farm must never be mistaken for a protected one.
  if (auth.isOpen)
    process.stderr.write(
      `WARNING: no tokens configured (--tokens FILE or FRAMEFARM_TOKENS_FILE): the gRPC API is OPEN to anyone who can reach ${host}; every caller is tenant "${DEFAULT_TENANT}"\n`,
    );
  else if (security.tls === undefined && !/^(127\.|localhost$|::1$)/.test(host))
    process.stderr.write(`WARNING: tokens travel in plaintext: serve TLS with --tls-cert and --tls-key\n`);
  const operators = security.operators ?? [];
  // A tenant that is an operator too keeps an operator's rights.
  const scrapeOnly = (security.metricsTenants ?? []).filter((t) => !operators.includes(t));
  const { bus, store } = await connectFarm(conn, "coordinator", log);
  const hooks = security.webhooks;
  const policy =
    hooks?.secret !== undefined
      ? new WebhookPolicy({ allow: hooks.allow, secret: hooks.secret, perTenantSecrets: !auth.isOpen })
      : undefined;
  let deliverer: WebhookDeliverer | undefined;
  // Webhooks go out from the leader only (one sender per farm): started and stopped with the lease.
  let webhooksChanging: Promise<void> = Promise.resolve();
  const onLeader = (leading: boolean): void => {
    webhooksChanging = webhooksChanging
      .then(async () => {
        if (leading && policy !== undefined) deliverer ??= await WebhookDeliverer.start(bus, policy, { log });
        if (!leading) {
          const d = deliverer;
          deliverer = undefined;
          await d?.stop();
        }
      })
      .catch((err: Error) => log.error({ err: err.message }, "webhook deliverer start/stop failed"));
  };
  const holder = `${os.hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  const retainJobsMs = security.retainJobsMs ?? DEFAULT_RETAIN_MS;
  const dispatcher = await Dispatcher.start(bus, store, {
    onRecord: (jobId) => deliverer?.notify(jobId),
    onLeader,
    ...(security.maxRunningPerTenant !== undefined ? { maxRunningPerTenant: security.maxRunningPerTenant } : {}),
    lease: { holder, ttlMs: security.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS, log },
    retention: { retainMs: retainJobsMs, log },
    log,
  });
  await webhooksChanging;
  if (!dispatcher.leader) log.info({ holder }, "follower: serving the API, another coordinator dispatches");
  const service = new JobService({
    bus,
    store,
    dispatcher,
    manifest: bundle.manifest,
    bundleName: path.basename(bundle.dir),
    bundleDigest: await bundleDigest(bundle),
    auth,
    scrapeOnlyTenants: scrapeOnly,
    operatorTenants: operators,
    retainJobsMs,
    ...(security.tenantMaxPriority !== undefined ? { tenantMaxPriority: security.tenantMaxPriority } : {}),
    ...(security.maxQueuedPerTenant !== undefined ? { maxQueuedPerTenant: security.maxQueuedPerTenant } : {}),
    ...(policy !== undefined ? { webhooks: policy } : {}),
  });
  const api = await startApiServer(service, host, at.port, security.tls !== undefined ? { tls: security.tls } : {});
  const dashboard = await startDashboard({
    bus,
    store,
    dispatcher,
    host,
    port: at.httpPort,
    log,
    authorize: auth.operatorGate(operators),
    authorizeMetrics: auth.operatorGate([...operators, ...scrapeOnly]),
    authChanges: (fn) => auth.onChange(fn),
    storeTraffic: () => store.traffic,
    tenantRefusals: () => service.refusals(),
    jobs: service,
    historySampleMs: sampleMs,
  });
  // Secure as it is (the dashboard shows every tenant's jobs), so a note rather than a warning.
  if (!auth.isOpen && operators.length === 0) log.warn("no --operators tenants: the dashboard refuses every request");
  let tokenFile: TokenFileWatcher | undefined;
  if (!auth.isOpen && security.tokensFile !== undefined)
    tokenFile = await watchTokenFile(security.tokensFile, auth, log);
  log.info(
    {
      grpcPort: api.port,
      httpPort: dashboard.port,
      leader: dispatcher.leader,
      retainJobs: formatDuration(retainJobsMs),
    },
    "coordinator serving",
  );
  return {
    port: api.port,
    httpPort: dashboard.port,
    // Bounded whatever is gone already (NATS, the object store): see stopParts.
    stop: () => {
      tokenFile?.stop();
      return stopParts(log, [
        { name: "dashboard", run: () => dashboard.stop() },
        { name: "gRPC API", run: () => api.stop() },
        { name: "dispatcher", run: () => dispatcher.stop() },
        { name: "webhook deliverer", run: async () => (await webhooksChanging, deliverer?.stop()) },
        { name: "NATS connection", run: () => bus.close() },
      ]);
    },
  };
}

export const SECURITY_OPTIONS = {
  tokens: { type: "string" },
  operators: { type: "string" },
  "metrics-tenants": { type: "string" },
  "tenant-max-priority": { type: "string" },
  "max-queued-per-tenant": { type: "string" },
  "max-running-per-tenant": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "webhook-secret": { type: "string" },
  "webhook-allow": { type: "string" },
} as const;

export async function coordinatorCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...FARM_OPTIONS,
      ...SECURITY_OPTIONS,
      ...TRACING_OPTIONS,
      bundle: { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      "http-port": { type: "string" },
      "lease-ttl-ms": { type: "string" },
      "retain-jobs": { type: "string" },
    },
  });
  // Flags win over FRAMEFARM_HOST / FRAMEFARM_PORT / FRAMEFARM_HTTP_PORT (containers set those: deploy/k8s).
  const env = process.env;
  const host = values.host ?? env["FRAMEFARM_HOST"] ?? "127.0.0.1";
  const log = createLogger("coordinator");
  const tracing = await startProcessTracing(
    "framefarm-coordinator",
    values["otlp-endpoint"],
    `${os.hostname()}:${process.pid}`,
    log,
  );
  const c = await startCoordinator(
    farmConnection(values),
    values.bundle ?? defaultBundleDir(),
    {
      host,
      port: parsePort("--port", values.port ?? env["FRAMEFARM_PORT"], DEFAULT_API_PORT),
      httpPort: parsePort("--http-port", values["http-port"] ?? env["FRAMEFARM_HTTP_PORT"], DEFAULT_HTTP_PORT),
    },
    {
      ...(await securityOptions(values)),
      ...leaseOptions(values["lease-ttl-ms"]),
      ...retentionOptions(values["retain-jobs"]),
    },
  );
  process.stdout.write(`gRPC listening on ${host}:${c.port}${values["tls-cert"] !== undefined ? " (TLS)" : ""}\n`);
  process.stdout.write(`dashboard on http://${host}:${c.httpPort}\n`);
  await untilSignal();
  await c.stop();
  // After the dispatcher: its last spans go out too.
  await stopParts(log, [{ name: "tracing", run: () => tracing.shutdown() }]);
  return 0;
}

/** --lease-ttl-ms / FRAMEFARM_LEASE_TTL_MS. */
export function leaseOptions(flag: string | undefined): { leaseTtlMs?: number } {
  const v = flag ?? process.env["FRAMEFARM_LEASE_TTL_MS"];
  return v === undefined || v === "" ? {} : { leaseTtlMs: integerOption("--lease-ttl-ms", v, 300, 600_000) };
}

/** --retain-jobs / FRAMEFARM_RETAIN_JOBS: `30m`, `12h`, `7d`, ... */
export function retentionOptions(flag: string | undefined): { retainJobsMs?: number } {
  const v = flag ?? process.env["FRAMEFARM_RETAIN_JOBS"];
  return v === undefined || v === "" ? {} : { retainJobsMs: parseDuration("--retain-jobs", v) };
}

function integerOption(flag: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^-?\d+$/.test(value.trim()) || n < min || n > max)
    throw new FarmError("INVALID_ARGUMENT", `${flag} must be an integer ${min}..${max}, got ${value}`);
  return n;
}

const tenantList = (value: string | undefined): string[] | undefined =>
  value === undefined || value === ""
    ? undefined
    : value
        .split(",")
        .map((t) => t.trim())
        .filter((t) => t !== "");

/**
 * --tokens / FRAMEFARM_TOKENS_FILE, --operators / FRAMEFARM_OPERATORS, --metrics-tenants /
 * FRAMEFARM_METRICS_TENANTS, --tenant-max-priority / FRAMEFARM_TENANT_MAX_PRIORITY,
 * --max-queued-per-tenant / FRAMEFARM_MAX_QUEUED_PER_TENANT, --max-running-per-tenant /
 * FRAMEFARM_MAX_RUNNING_PER_TENANT and --tls-cert / --tls-key as start-up settings.
 */
export async function securityOptions(values: {
  tokens?: string | undefined;
  operators?: string | undefined;
  "metrics-tenants"?: string | undefined;
  "tenant-max-priority"?: string | undefined;
  "max-queued-per-tenant"?: string | undefined;
  "max-running-per-tenant"?: string | undefined;
  "tls-cert"?: string | undefined;
  "tls-key"?: string | undefined;
  "webhook-secret"?: string | undefined;
  "webhook-allow"?: string | undefined;
}): Promise<CoordinatorSecurity> {
  const tokens = values.tokens ?? process.env["FRAMEFARM_TOKENS_FILE"];
  const out: CoordinatorSecurity = {};
  // The environment is read before the first await (test/deploy reads these with a temporary env).
  const operators = tenantList(values.operators ?? process.env["FRAMEFARM_OPERATORS"]);
  if (operators !== undefined) out.operators = operators;
  const metrics = tenantList(values["metrics-tenants"] ?? process.env["FRAMEFARM_METRICS_TENANTS"]);
  if (metrics !== undefined) out.metricsTenants = metrics;
  const cap = values["tenant-max-priority"] ?? process.env["FRAMEFARM_TENANT_MAX_PRIORITY"];
  if (cap !== undefined && cap !== "") out.tenantMaxPriority = integerOption("--tenant-max-priority", cap, -1000, 1000);
  const queued = values["max-queued-per-tenant"] ?? process.env["FRAMEFARM_MAX_QUEUED_PER_TENANT"];
  if (queued !== undefined && queued !== "")
    out.maxQueuedPerTenant = integerOption("--max-queued-per-tenant", queued, 1, 1_000_000);
  const running = values["max-running-per-tenant"] ?? process.env["FRAMEFARM_MAX_RUNNING_PER_TENANT"];
  if (running !== undefined && running !== "")
    out.maxRunningPerTenant = integerOption("--max-running-per-tenant", running, 1, 1_000_000);
  if (tokens !== undefined && tokens !== "") {
    out.auth = await TokenAuth.fromFile(tokens);
    out.tokensFile = tokens;
  }
  const secret = values["webhook-secret"] ?? process.env["FRAMEFARM_WEBHOOK_SECRET"];
  const allow = WebhookPolicy.parseAllowList(values["webhook-allow"] ?? process.env["FRAMEFARM_WEBHOOK_ALLOW"]);
  if (secret !== undefined && secret !== "") out.webhooks = { secret, allow };
  else if (allow.length > 0)
    throw new FarmError(
      "INVALID_ARGUMENT",
      "--webhook-allow without --webhook-secret (FRAMEFARM_WEBHOOK_SECRET): webhooks are signed",
    );
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
