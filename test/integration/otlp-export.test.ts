/**
 * The OTLP exporters as startTracing configures them, against a real OTLP/HTTP receiver on
 * loopback: --otlp-endpoint is a base URL (spans go to /v1/traces), JSON is the default encoding,
 * http/protobuf posts protobuf, and stopping tracing sends what the batch still holds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startTracing, tracer } from "../../shared/telemetry/tracing.js";
import { startOtlpReceiver } from "../support/otlp-receiver.js";

test("spans reach an OTLP/HTTP collector as JSON by default, as protobuf when asked, flushed on shutdown", async () => {
  const receiver = await startOtlpReceiver();
  try {
    const json = await startTracing(
      "framefarm-coordinator",
      { endpoint: `${receiver.endpoint}/`, protocol: "http/json" },
      { instanceId: "host:1" },
    );
    tracer()
      .startSpan("exported", { attributes: { "framefarm.job.id": "j1" } })
      .end();
    // Batched (every 5 s by default): the shutdown sends it.
    await json.shutdown();
    assert.equal(receiver.spans.length, 1);
    const span = receiver.spans[0]!;
    assert.equal(span.name, "exported");
    assert.equal(span.attributes["framefarm.job.id"], "j1");
    assert.match(span.traceId, /^[0-9a-f]{32}$/);
    assert.equal(span.resource["service.name"], "framefarm-coordinator");
    assert.equal(span.resource["service.instance.id"], "host:1");
    assert.deepEqual(receiver.refused, []);

    const proto = await startTracing("framefarm-node", { endpoint: receiver.endpoint, protocol: "http/protobuf" });
    tracer().startSpan("as protobuf").end();
    await proto.shutdown();
    // This receiver decodes JSON only: the protobuf request is the one it turned away.
    assert.deepEqual(receiver.refused, ["POST /v1/traces application/x-protobuf"]);
    assert.equal(receiver.spans.length, 1);
  } finally {
    await receiver.stop();
  }
});
