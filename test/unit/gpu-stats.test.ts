/**
 * A CUDA node's GPU figures from nvidia-smi: its CSV output parsed (test/fixtures/nvidia-smi), the
 * GPU of this process picked from CUDA_VISIBLE_DEVICES, and the sampler run against a stand-in
 * nvidia-smi script printing that output (there is no GPU here): its arguments, a failure and a hang
 * (killed at the timeout) clearing the figures, and no sampler at all on a CPU or WebGPU node.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  GpuSampler,
  findOnPath,
  gpuOfProcess,
  gpuSamplerFor,
  parseNvidiaSmi,
  readNvidiaSmi,
} from "../../gpu-node/worker/gpu-stats.js";
import { msOf } from "../../shared/nodes/node-registry.js";
import { repoRoot } from "../support/paths.js";

const fixture = (name: string): Promise<string> =>
  readFile(path.join(repoRoot(), "test", "fixtures", "nvidia-smi", name), "utf8");
const AT = Date.parse("2026-03-01T12:00:00.250Z");

test("nvidia-smi's CSV: one entry per GPU, memory in MiB, the sample's time", async () => {
  const [gpu] = parseNvidiaSmi(await fixture("h200.csv"), AT);
  assert.deepEqual(
    { ...gpu, sampledAt: undefined },
    {
      index: 0,
      name: "NVIDIA H200",
      utilizationPercent: 87,
      memoryUsedMib: 71234,
      memoryTotalMib: 143771,
      sampledAt: undefined,
    },
  );
  assert.equal(msOf(gpu!.sampledAt), AT);
  const two = parseNvidiaSmi(await fixture("h200-x2.csv"), AT);
  assert.deepEqual(
    two.map((g) => [g.index, g.utilizationPercent, g.memoryUsedMib]),
    [
      [0, 100, 98304],
      [1, 0, 4],
    ],
  );
});

test("a utilisation the GPU does not report (MIG) is left out, not made 0; lines without numbers are skipped", async () => {
  const [mig] = parseNvidiaSmi(await fixture("mig.csv"), AT);
  assert.equal(mig!.utilizationPercent, undefined);
  assert.equal("utilizationPercent" in mig!, false);
  assert.deepEqual([mig!.memoryUsedMib, mig!.memoryTotalMib], [10240, 81920]);
  assert.deepEqual(parseNvidiaSmi(await fixture("no-devices.txt"), AT), []);
  assert.deepEqual(parseNvidiaSmi("0, NVIDIA H200, 5, [N/A], 143771\n\n", AT), []);
  // A comma inside the name stays in the name.
  assert.equal(parseNvidiaSmi("3, Tesla, rev B, 12, 100, 200\r\n", AT)[0]!.name, "Tesla, rev B");
});

test("the GPU of this process: the first of CUDA_VISIBLE_DEVICES, else index 0", () => {
  assert.equal(gpuOfProcess({}), "0");
  assert.equal(gpuOfProcess({ CUDA_VISIBLE_DEVICES: "" }), "0");
  assert.equal(gpuOfProcess({ CUDA_VISIBLE_DEVICES: "3,1" }), "3");
  assert.equal(
    gpuOfProcess({ CUDA_VISIBLE_DEVICES: "GPU-8a1d2f4c-1b2c-3d4e-5f60-718293a4b5c6" }),
    "GPU-8a1d2f4c-1b2c-3d4e-5f60-718293a4b5c6",
  );
  assert.equal(gpuOfProcess({ CUDA_VISIBLE_DEVICES: "MIG-GPU-8a1d/1/0" }), undefined);
});

/** A stand-in nvidia-smi: writes its arguments beside itself and runs `body`. */
async function standIn(dir: string, body: string): Promise<string> {
  const file = path.join(dir, "nvidia-smi");
  await writeFile(file, `#!/bin/sh\necho "$@" > "${dir}/args"\n${body}\n`);
  await chmod(file, 0o755);
  return file;
}

test("the sampler runs nvidia-smi with the query and the process's GPU, and keeps the latest answer", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-smi-"));
  try {
    const csv = path.join(repoRoot(), "test", "fixtures", "nvidia-smi", "h200.csv");
    const bin = await standIn(dir, `cat "${csv}"`);
    const s = await GpuSampler.start({ binary: bin, intervalMs: 60_000, env: { CUDA_VISIBLE_DEVICES: "2" } });
    assert.deepEqual(
      s.latest().map((g) => [g.name, g.utilizationPercent, g.memoryUsedMib, g.memoryTotalMib]),
      [["NVIDIA H200", 87, 71234, 143771]],
    );
    assert.equal(
      (await readFile(path.join(dir, "args"), "utf8")).trim(),
      "--query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits --id=2",
    );
    await s.stop();
    // Found on PATH, only for the CUDA provider.
    const env = { PATH: `/nonexistent${path.delimiter}${dir}` };
    assert.equal(await findOnPath("nvidia-smi", env), bin);
    assert.equal(await gpuSamplerFor("cpu", { intervalMs: 60_000, env }), undefined);
    assert.equal(await gpuSamplerFor("webgpu", { intervalMs: 60_000, env }), undefined);
    assert.equal(await gpuSamplerFor("cuda", { intervalMs: 60_000, env: { PATH: "/nonexistent" } }), undefined);
    const cuda = await gpuSamplerFor("cuda", { intervalMs: 60_000, env });
    assert.equal(cuda?.latest().length, 1);
    await cuda?.stop();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a failing or hung nvidia-smi clears the figures (reported once), and they come back when it works", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-smi-"));
  try {
    const mode = path.join(dir, "mode");
    const csv = path.join(repoRoot(), "test", "fixtures", "nvidia-smi", "h200.csv");
    const bin = await standIn(
      dir,
      `case "$(cat "${mode}")" in fail) echo "No devices were found"; exit 6;; hang) exec sleep 30;; *) cat "${csv}";; esac`,
    );
    await writeFile(mode, "ok");
    const errors: unknown[] = [];
    const s = await GpuSampler.start({
      binary: bin,
      intervalMs: 60_000,
      timeoutMs: 500,
      onError: (e) => errors.push(e),
    });
    assert.equal(s.latest().length, 1);
    await writeFile(mode, "fail");
    await s.sample();
    await s.sample();
    assert.deepEqual(s.latest(), []);
    assert.equal(errors.length, 1, "a run of failures is reported once");
    await writeFile(mode, "ok");
    await s.sample();
    assert.equal(s.latest().length, 1);
    await writeFile(mode, "hang");
    const t0 = Date.now();
    await s.sample();
    assert.ok(Date.now() - t0 < 5000, "a hung nvidia-smi is killed at the timeout");
    assert.deepEqual(s.latest(), []);
    assert.equal(errors.length, 2);
    await s.stop();
    await assert.rejects(readNvidiaSmi(path.join(dir, "missing"), undefined, 500));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
