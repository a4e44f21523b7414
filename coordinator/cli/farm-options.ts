/**
 * Connection settings shared by `framefarm coordinator`, `node` and `cluster`: where NATS and the
 * S3 server are. Flags win over environment variables (FRAMEFARM_NATS, FRAMEFARM_S3,
 * FRAMEFARM_S3_BUCKET, FRAMEFARM_S3_ACCESS_KEY, FRAMEFARM_S3_SECRET_KEY, FRAMEFARM_S3_TLS,
 * FRAMEFARM_S3_RETRY_MS: how long an unreachable object store is retried before a task fails;
 * FRAMEFARM_NATS_REPLICAS, env only: JetStream replicas of the streams and KV buckets created).
 */
import { FarmError } from "../../shared/errors.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { stopGraceMs, stopInOrder, type StopStep } from "../../shared/shutdown.js";
import type { Logger } from "../../shared/log/logger.js";
import { startTracing, tracingSettings, type Tracing } from "../../shared/telemetry/tracing.js";

export const FARM_OPTIONS = {
  nats: { type: "string" },
  s3: { type: "string" },
  bucket: { type: "string" },
} as const;

/**
 * Tracing (shared/telemetry/tracing.ts), for coordinator, node and cluster: `--otlp-endpoint URL`
 * (an OTLP/HTTP collector, Jaeger's or Tempo's port 4318) or the OTEL_* variables; off without them.
 */
export const TRACING_OPTIONS = {
  "otlp-endpoint": { type: "string" },
} as const;

export const TRACING_HELP = `  --otlp-endpoint URL     send traces over OTLP/HTTP to this collector (http://HOST:4318; or
                          OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER=otlp|none): off without`;

/** Starts this process's tracing as `service` if --otlp-endpoint or the OTEL_* variables ask for it. */
export function startProcessTracing(
  service: string,
  flag: string | undefined,
  instanceId: string,
  log: Logger,
): Promise<Tracing> {
  return startTracing(service, tracingSettings(flag), { instanceId, log });
}

export interface FarmConnection {
  nats: string;
  /** JetStream replicas of what this process creates; 1 when absent. */
  natsReplicas?: number;
  s3: {
    host: string;
    port: number;
    tls: boolean;
    accessKey: string;
    secretKey: string;
    bucket: string;
    retryForMs?: number;
  };
}

export function farmConnection(values: {
  nats?: string | undefined;
  s3?: string | undefined;
  bucket?: string | undefined;
}): FarmConnection {
  const env = process.env;
  const nats = values.nats ?? env["FRAMEFARM_NATS"];
  const s3 = values.s3 ?? env["FRAMEFARM_S3"];
  if (nats === undefined)
    throw new FarmError(
      "INVALID_ARGUMENT",
      "NATS address missing: --nats nats://HOST:PORT[,nats://HOST:PORT...] (or FRAMEFARM_NATS)",
    );
  if (s3 === undefined) throw new FarmError("INVALID_ARGUMENT", "S3 address missing: --s3 HOST:PORT (or FRAMEFARM_S3)");
  const m = /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(s3);
  if (m === null) throw new FarmError("INVALID_ARGUMENT", `--s3 must be HOST:PORT, got ${JSON.stringify(s3)}`);
  const retry = env["FRAMEFARM_S3_RETRY_MS"];
  const retryForMs = retry === undefined ? undefined : Number(retry);
  if (retryForMs !== undefined && (!Number.isInteger(retryForMs) || retryForMs < 0))
    throw new FarmError(
      "INVALID_ARGUMENT",
      `FRAMEFARM_S3_RETRY_MS must be a whole number of milliseconds, got ${JSON.stringify(retry)}`,
    );
  const natsReplicas = Number(env["FRAMEFARM_NATS_REPLICAS"] ?? 1);
  if (!Number.isInteger(natsReplicas) || natsReplicas < 1 || natsReplicas > 5)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `FRAMEFARM_NATS_REPLICAS must be an integer from 1 to 5, got ${env["FRAMEFARM_NATS_REPLICAS"]}`,
    );
  return {
    nats,
    natsReplicas,
    s3: {
      host: m[1]!,
      port: Number(m[2]),
      tls: env["FRAMEFARM_S3_TLS"] === "1",
      accessKey: env["FRAMEFARM_S3_ACCESS_KEY"] ?? "S3RVER",
      secretKey: env["FRAMEFARM_S3_SECRET_KEY"] ?? "S3RVER",
      bucket: values.bucket ?? env["FRAMEFARM_S3_BUCKET"] ?? "framefarm",
      ...(retryForMs !== undefined ? { retryForMs } : {}),
    },
  };
}

export async function connectFarm(c: FarmConnection, name: string): Promise<{ bus: NatsBus; store: S3ObjectStore }> {
  const bus = await NatsBus.connect(c.nats, name, c.natsReplicas ?? 1);
  const store = await S3ObjectStore.open({
    endpoint: c.s3.host,
    port: c.s3.port,
    useSSL: c.s3.tls,
    accessKey: c.s3.accessKey,
    secretKey: c.s3.secretKey,
    bucket: c.s3.bucket,
    ...(c.s3.retryForMs !== undefined ? { retryForMs: c.s3.retryForMs } : {}),
  });
  return { bus, store };
}

/**
 * Resolves on the first SIGINT or SIGTERM, and from then on bounds the process's life: it exits
 * (code 1, saying so) graceMs + 2 s later whatever its stop is still waiting on, a dead NATS server or
 * object store, say. Later signals do not kill it mid-stop (Ctrl-C signals the whole process group,
 * and `cluster` passes SIGTERM on to its children too); the deadline still holds.
 */
export function untilSignal(graceMs = stopGraceMs()): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    let first: NodeJS.Signals | undefined;
    const on = (s: NodeJS.Signals): void => {
      if (first !== undefined) return;
      first = s;
      const timer = setTimeout(() => {
        process.stderr.write(
          `error [DEADLINE_EXCEEDED]: stop after ${s} did not finish within ${graceMs + 2_000} ms; exiting\n`,
        );
        process.exit(1);
      }, graceMs + 2_000);
      timer.unref();
      resolve(s);
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}

/** Stops a farm process's parts in order within graceMs, logging what failed or overran; never throws. */
export async function stopParts(log: Logger, steps: readonly StopStep[], graceMs = stopGraceMs()): Promise<void> {
  await stopInOrder(steps, graceMs, (p) => log.warn({ step: p.step, problem: p.problem }, "stop step failed"));
}
