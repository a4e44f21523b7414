/**
 * Admission on a CUDA node: the GPU's memory as nvidia-smi reports it, and a bundle whose weights
 * alone exceed it refused with RESOURCE_EXHAUSTED naming both numbers and the way out (a quantized
 * bundle). Weights in an external data file count.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { admitJob, availableMemory, estimateForRuntime } from "../../gpu-node/runtime/memory-admission.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import type { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import type { GpuStats } from "../../proto/gen/framefarm/v1/node.js";
import { FarmError } from "../../shared/errors.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { tinyBundleDir } from "../support/paths.js";

const gpu = (totalMib: number): GpuStats => ({
  index: 0,
  name: "NVIDIA GeForce RTX 4090",
  utilizationPercent: 3,
  memoryUsedMib: 500,
  memoryTotalMib: totalMib,
});

const params = validateRenderParams(
  { prompt: "a", seconds: 1 },
  { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
);
const spec = toJobSpec("j", params, { height: 64, width: 64 });

/** A CUDA runtime as admission sees it: its bundle and provider (no session is created). */
async function cudaRuntime(dir: string): Promise<ModelRuntime> {
  return {
    bundle: await openBundle(dir),
    settings: { ep: "cuda" },
    settingsFor: () => ({ ep: "cuda" }),
  } as unknown as ModelRuntime;
}

test("a CUDA node's memory is its GPU's as nvidia-smi reports it; FRAMEFARM_MEMORY_MB still wins", () => {
  assert.deepEqual(availableMemory("cuda", {}, [gpu(24564)]), {
    bytes: 24564 * 2 ** 20,
    what: "GPU 0 (NVIDIA GeForce RTX 4090, 24564 MiB as nvidia-smi reports it)",
    gpu: true,
  });
  assert.equal(availableMemory("cuda", { FRAMEFARM_MEMORY_MB: "1000" }, [gpu(24564)])?.bytes, 1000 * 2 ** 20);
  assert.equal(availableMemory("cuda", {}, []), null, "no sample: nothing is checked");
  assert.equal(availableMemory("webgpu", {}, [gpu(24564)]), null);
});

test("weights past the GPU's memory are refused, naming both and the quantized way out; external data counts", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-gpu-admission-"));
  try {
    await cp(tinyBundleDir(), dir, { recursive: true });
    // The transformer's weights moved to an external data file of 40 MiB, as a large export has them.
    const manifestFile = path.join(dir, "framefarm-bundle.json");
    const manifest = JSON.parse(await readFile(manifestFile, "utf8")) as {
      components: Record<string, { external_data: string | null }>;
    };
    manifest.components["transformer"]!.external_data = "transformer.onnx.data";
    await writeFile(manifestFile, JSON.stringify(manifest));
    await writeFile(path.join(dir, "transformer.onnx.data"), new Uint8Array(40 * 2 ** 20));

    const runtime = await cudaRuntime(dir);
    const plain = estimateForRuntime(await cudaRuntime(tinyBundleDir()), spec);
    const weights = estimateForRuntime(runtime, spec).weights;
    assert.equal(weights - plain.weights, 40 * 2 ** 20, "the external data file is counted");

    admitJob(runtime, spec, {}, [gpu(24564)]);
    assert.throws(
      () => admitJob(runtime, spec, {}, [gpu(32)]),
      (e: unknown) =>
        e instanceof FarmError &&
        e.status === "RESOURCE_EXHAUSTED" &&
        e.message.includes(`has ${(weights / 2 ** 30).toFixed(1)} GiB of weights`) &&
        e.message.includes("GPU 0 (NVIDIA GeForce RTX 4090, 32 MiB as nvidia-smi reports it) has 0.0 GiB") &&
        e.message.includes("framefarm_export.quantize"),
    );
    admitJob(runtime, spec, {}, []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
