/**
 * Traces (OpenTelemetry): one trace per job, from SubmitJob through every task on every node to
 * mux. The trace context travels as W3C trace context (`traceparent`, `tracestate`) in a carrier:
 * the job record keeps the SubmitJob span's (so whichever coordinator dispatches, after a failover
 * or a retry, its spans land in the job's trace), each task message the span that dispatched it,
 * each task result the node's span.
 *
 * Off by default: without --otlp-endpoint or the OTEL_* variables below no SDK is loaded, the API's
 * no-op tracer answers every call and carriers stay empty. On, spans go out over OTLP/HTTP (JSON
 * bodies, or protobuf with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf) in batches.
 */
import {
  DiagLogLevel,
  ROOT_CONTEXT,
  SpanStatusCode,
  context,
  diag,
  propagation,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import type { SpanExporter } from "@opentelemetry/sdk-trace-node";
import { FarmError } from "../errors.js";
import { FRAMEFARM_VERSION } from "../version.js";
import type { Logger } from "../log/logger.js";

/** W3C trace context as string fields (`traceparent`, `tracestate`): what messages and records carry. */
export type TraceCarrier = Record<string, string>;

/** Span attributes of framefarm's own (OpenTelemetry's names where it has them). */
export const TRACE_ATTRS = {
  jobId: "framefarm.job.id",
  taskId: "framefarm.task.id",
  stage: "framefarm.stage",
  section: "framefarm.section",
  /** Which attempt of the task (1 first; operator retries count on). */
  attempt: "framefarm.attempt",
  nodeId: "framefarm.node.id",
  bytesRead: "framefarm.bytes_read",
  bytesWritten: "framefarm.bytes_written",
  modelMs: "framefarm.model_ms",
  /** done, failed, dropped (its job had ended), cancelled, handed_back (the node stopped). */
  outcome: "framefarm.task.outcome",
  /** A task queued again by a coordinator taking the job over. */
  resumed: "framefarm.resumed",
  jobState: "framefarm.job.state",
  errorStatus: "framefarm.error.status",
} as const;

export type OtlpProtocol = "http/json" | "http/protobuf";

export interface TracingSettings {
  /** OTLP/HTTP base endpoint from --otlp-endpoint (`/v1/traces` is appended); absent: the OTEL_* variables say. */
  endpoint?: string;
  protocol: OtlpProtocol;
}

const nonEmpty = (v: string | undefined): string | undefined =>
  v === undefined || v.trim() === "" ? undefined : v.trim();

/**
 * Whether this process traces, and where to: null is off. On with `--otlp-endpoint URL` (which
 * wins), or with OTEL_TRACES_EXPORTER=otlp, or with OTEL_EXPORTER_OTLP_ENDPOINT /
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set while OTEL_TRACES_EXPORTER is unset; off with
 * OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true. Unlike OpenTelemetry's own SDK nothing is
 * exported to localhost:4318 unasked: a farm without a collector sends nothing.
 */
export function tracingSettings(
  flag: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): TracingSettings | null {
  const protocolText =
    nonEmpty(env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]) ?? nonEmpty(env["OTEL_EXPORTER_OTLP_PROTOCOL"]) ?? "http/json";
  const protocol = (): OtlpProtocol => {
    if (protocolText === "http/json" || protocolText === "http/protobuf") return protocolText;
    throw new FarmError(
      "INVALID_ARGUMENT",
      `OTEL_EXPORTER_OTLP_PROTOCOL ${JSON.stringify(protocolText)} is not one framefarm exports: use http/json or http/protobuf (OTLP over HTTP, port 4318)`,
    );
  };
  if (flag !== undefined) {
    let url: URL;
    try {
      url = new URL(flag);
    } catch {
      throw new FarmError("INVALID_ARGUMENT", `--otlp-endpoint must be an http(s) URL, got ${JSON.stringify(flag)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:")
      throw new FarmError("INVALID_ARGUMENT", `--otlp-endpoint must be an http(s) URL, got ${JSON.stringify(flag)}`);
    return { endpoint: flag, protocol: protocol() };
  }
  if (nonEmpty(env["OTEL_SDK_DISABLED"])?.toLowerCase() === "true") return null;
  const exporter = nonEmpty(env["OTEL_TRACES_EXPORTER"])?.toLowerCase();
  if (exporter === "none") return null;
  if (exporter !== undefined && exporter !== "otlp")
    throw new FarmError(
      "INVALID_ARGUMENT",
      `OTEL_TRACES_EXPORTER ${JSON.stringify(exporter)} is not one framefarm has: use otlp or none`,
    );
  const endpointSet =
    nonEmpty(env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) !== undefined ||
    nonEmpty(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) !== undefined;
  return exporter === "otlp" || endpointSet ? { protocol: protocol() } : null;
}

export interface Tracing {
  readonly enabled: boolean;
  /** Sends the spans not yet exported and stops tracing (bounded by the exporter's timeout); never throws. */
  shutdown(): Promise<void>;
}

const OFF: Tracing = { enabled: false, shutdown: async () => undefined };
let running: Tracing | undefined;

export interface TracingOptions {
  /** service.instance.id: the node id, or host:pid for a coordinator. */
  instanceId?: string;
  /** Where the exporter's own complaints go (a collector that cannot be reached, say). */
  log?: Logger;
  /**
   * Spans go to this exporter one at a time instead of OTLP in batches (tests read them back in
   * the same process); tracing is on with it whatever the settings say.
   */
  exporter?: SpanExporter;
}

/**
 * Starts tracing for this process as `service` (service.name; OTEL_SERVICE_NAME and
 * OTEL_RESOURCE_ATTRIBUTES win) when the settings say so. One provider per process: a second
 * call while one runs gets the first (`cluster` runs two coordinators in one process).
 */
export async function startTracing(
  service: string,
  settings: TracingSettings | null,
  options: TracingOptions = {},
): Promise<Tracing> {
  if (settings === null && options.exporter === undefined) return OFF;
  if (running !== undefined) return running;
  // Loaded only when on, so a farm that does not trace pays nothing at start.
  const [{ NodeTracerProvider, BatchSpanProcessor, SimpleSpanProcessor }, resources, semconv] = await Promise.all([
    import("@opentelemetry/sdk-trace-node"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/semantic-conventions"),
  ]);
  const exporter = options.exporter ?? (await otlpExporter(settings!));
  const resource = resources
    .defaultResource()
    .merge(
      resources.resourceFromAttributes({
        [semconv.ATTR_SERVICE_NAME]: service,
        [semconv.ATTR_SERVICE_VERSION]: FRAMEFARM_VERSION,
        ...(options.instanceId !== undefined ? { "service.instance.id": options.instanceId } : {}),
      }),
    )
    .merge(resources.detectResources({ detectors: [resources.envDetector] }));
  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [
      options.exporter !== undefined ? new SimpleSpanProcessor(exporter) : new BatchSpanProcessor(exporter),
    ],
  });
  // The W3C trace context propagator and an AsyncLocalStorage context manager, process-wide.
  provider.register();
  const log = options.log;
  if (log !== undefined)
    diag.setLogger(
      {
        error: (m, ...a) => log.warn({ otel: a.map(String) }, `tracing: ${m}`),
        warn: (m, ...a) => log.warn({ otel: a.map(String) }, `tracing: ${m}`),
        info: () => undefined,
        debug: () => undefined,
        verbose: () => undefined,
      },
      DiagLogLevel.WARN,
    );
  const handle: Tracing = {
    enabled: true,
    shutdown: async () => {
      if (running !== handle) return;
      running = undefined;
      try {
        await provider.shutdown();
      } catch (err) {
        // The collector is away or refuses: the farm's own stop goes on without those spans.
        log?.warn({ err: err instanceof Error ? err.message : String(err) }, "tracing: last spans not sent");
      } finally {
        trace.disable();
        propagation.disable();
        context.disable();
        diag.disable();
      }
    },
  };
  running = handle;
  return handle;
}

async function otlpExporter(settings: TracingSettings): Promise<SpanExporter> {
  // The flag is a base endpoint as OTEL_EXPORTER_OTLP_ENDPOINT is; the exporters read the OTEL_*
  // variables (endpoint, headers, timeout, compression, certificates) themselves.
  const url = settings.endpoint === undefined ? undefined : `${settings.endpoint.replace(/\/+$/, "")}/v1/traces`;
  const config = url === undefined ? {} : { url };
  if (settings.protocol === "http/protobuf") {
    const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-proto");
    return new OTLPTraceExporter(config);
  }
  const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
  return new OTLPTraceExporter(config);
}

/** framefarm's tracer: the API's no-op one until startTracing registers a provider. */
export const tracer = (): Tracer => trace.getTracer("framefarm", FRAMEFARM_VERSION);

/** The context's span as a carrier; undefined when there is none to carry (tracing off). */
export function carrierOf(ctx: Context): TraceCarrier | undefined {
  const carrier: TraceCarrier = {};
  propagation.inject(ctx, carrier);
  return Object.keys(carrier).length > 0 ? carrier : undefined;
}

/** The span as a carrier, for its children in other processes. */
export const spanCarrier = (span: Span): TraceCarrier | undefined => carrierOf(trace.setSpan(ROOT_CONTEXT, span));

/** The context a carrier names, to start child spans in (the root context without one). */
export const contextOf = (carrier: TraceCarrier | undefined): Context =>
  carrier === undefined ? ROOT_CONTEXT : propagation.extract(ROOT_CONTEXT, carrier);

/** The context of a span, to start its children in. */
export const inSpan = (span: Span): Context => trace.setSpan(ROOT_CONTEXT, span);

/** Extracts a context from a multi-valued header map (gRPC metadata: `traceparent`, `tracestate`). */
export function contextFromHeaders(get: (key: string) => string | undefined, keys: () => string[]): Context {
  const getter: TextMapGetter<null> = { get: (_c, key) => get(key), keys: () => keys() };
  return propagation.extract(ROOT_CONTEXT, null, getter);
}

/** Marks the span failed with the error's gRPC status and message. */
export function recordFailure(span: Span, err: unknown): void {
  if (!span.isRecording()) return;
  const status = err instanceof FarmError ? err.status : "INTERNAL";
  span.setAttribute(TRACE_ATTRS.errorStatus, status);
  if (err instanceof Error) span.recordException(err);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: `${status}: ${err instanceof Error ? err.message : String(err)}`,
  });
}
