/**
 * Tracing's settings (off unless asked, the flag over the OTEL_* variables, refusals that name the
 * setting) and its carriers: empty while off, W3C trace context while on, parsed back to the same
 * span; a task message without one (an older coordinator's) still parses.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-node";
import { FarmError } from "../../shared/errors.js";
import {
  carrierOf,
  contextOf,
  inSpan,
  spanCarrier,
  startTracing,
  tracer,
  tracingSettings,
} from "../../shared/telemetry/tracing.js";
import { taskMessages, type TaskMessage } from "../../shared/farm/protocol.js";

const refused = (fn: () => unknown, pattern: RegExp): void =>
  assert.throws(
    fn,
    (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && pattern.test(e.message),
  );

test("tracing is off unless a flag or an OTEL_* variable asks for it", () => {
  assert.equal(tracingSettings(undefined, {}), null);
  assert.equal(tracingSettings(undefined, { OTEL_SERVICE_NAME: "x" }), null);
  assert.deepEqual(tracingSettings(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }), {
    protocol: "http/json",
  });
  assert.deepEqual(tracingSettings(undefined, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4318/v1/traces" }), {
    protocol: "http/json",
  });
  assert.deepEqual(tracingSettings(undefined, { OTEL_TRACES_EXPORTER: "otlp" }), { protocol: "http/json" });
  assert.equal(
    tracingSettings(undefined, { OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }),
    null,
  );
  assert.equal(
    tracingSettings(undefined, { OTEL_SDK_DISABLED: "true", OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }),
    null,
  );
  assert.deepEqual(
    tracingSettings(undefined, { OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" }),
    { protocol: "http/protobuf" },
  );
});

test("--otlp-endpoint wins over the variables, and bad settings are refused by name", () => {
  assert.deepEqual(tracingSettings("http://tempo:4318", { OTEL_TRACES_EXPORTER: "none" }), {
    endpoint: "http://tempo:4318",
    protocol: "http/json",
  });
  refused(() => tracingSettings("tempo:4318", {}), /--otlp-endpoint must be an http\(s\) URL/);
  refused(() => tracingSettings("ftp://tempo", {}), /--otlp-endpoint/);
  refused(() => tracingSettings(undefined, { OTEL_TRACES_EXPORTER: "zipkin" }), /OTEL_TRACES_EXPORTER "zipkin"/);
  refused(
    () => tracingSettings("http://c:4317", { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }),
    /OTEL_EXPORTER_OTLP_PROTOCOL "grpc".*http\/json or http\/protobuf/,
  );
  // The traces-only protocol variable wins over the general one.
  assert.equal(
    tracingSettings(undefined, {
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_PROTOCOL: "grpc",
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf",
    })?.protocol,
    "http/protobuf",
  );
});

test("while off nothing is carried; while on a span's W3C context travels and comes back as its parent", async () => {
  assert.equal((await startTracing("t", null)).enabled, false);
  const off = tracer().startSpan("off");
  assert.equal(off.isRecording(), false);
  assert.equal(spanCarrier(off), undefined);
  assert.equal(carrierOf(ROOT_CONTEXT), undefined);

  const exporter = new InMemorySpanExporter();
  const tracing = await startTracing("framefarm-test", null, { exporter, instanceId: "unit" });
  try {
    assert.equal(tracing.enabled, true);
    const parent = tracer().startSpan("parent");
    const carrier = spanCarrier(parent)!;
    assert.match(carrier["traceparent"]!, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    // Through a task message's JSON, as a node gets it.
    const msg = taskMessages.decode(
      taskMessages.encode({ jobId: "j", taskId: "j.mux", trace: carrier } as unknown as TaskMessage),
    );
    const child = tracer().startSpan("child", {}, contextOf(msg.trace));
    child.end();
    tracer().startSpan("grandchild", {}, inSpan(child)).end();
    parent.end();
    const spans = exporter.getFinishedSpans();
    const byName = new Map(spans.map((s) => [s.name, s]));
    assert.equal(byName.get("child")!.parentSpanContext?.spanId, parent.spanContext().spanId);
    assert.equal(byName.get("child")!.spanContext().traceId, parent.spanContext().traceId);
    assert.equal(byName.get("grandchild")!.parentSpanContext?.spanId, child.spanContext().spanId);
    assert.equal(byName.get("parent")!.resource.attributes["service.name"], "framefarm-test");
    assert.equal(byName.get("parent")!.resource.attributes["service.instance.id"], "unit");
    // A message without a carrier (an older or untraced coordinator sent it) gives no parent.
    assert.equal(trace.getSpanContext(contextOf(undefined)), undefined);
  } finally {
    await tracing.shutdown();
  }
  // Off again after shutdown.
  assert.equal(tracer().startSpan("after").isRecording(), false);
});
