/** Which providers and session config each execution provider's sessions get. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { sessionProviders } from "../../gpu-node/runtime/onnx-model.js";

test("cpu sessions use the CPU provider alone", () => {
  assert.deepEqual(sessionProviders({ ep: "cpu" }), { providers: ["cpu"], config: {} });
});

test("cuda sessions keep weights out of the arena, and may place shape arithmetic on the CPU unless strict placement is asked for", () => {
  assert.deepEqual(sessionProviders({ ep: "cuda", strictPlacement: false }), {
    providers: ["cuda", "cpu"],
    config: { "session.use_device_allocator_for_initializers": "1" },
  });
  // onnxruntime refuses disable_cpu_ep_fallback with the CPU provider listed, so it is left out.
  assert.deepEqual(sessionProviders({ ep: "cuda", strictPlacement: true }), {
    providers: ["cuda"],
    config: { "session.use_device_allocator_for_initializers": "1", "session.disable_cpu_ep_fallback": "1" },
  });
});

test("provider options travel with the provider's name", () => {
  const { providers } = sessionProviders({ ep: "webgpu", providerOptions: { storageBufferCacheMode: "disabled" } });
  assert.deepEqual(providers, [{ storageBufferCacheMode: "disabled", name: "webgpu" }, "cpu"]);
});
