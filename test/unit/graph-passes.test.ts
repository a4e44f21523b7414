/**
 * The exporter's graph passes for onnxruntime's CUDA provider (gpu-node/export/framefarm_export/
 * graph_passes.py) keep a VAE decoder's values: edge Pad as Slice+Concat is bit-identical,
 * GroupNorm as float32 ReduceMean within float32 rounding. Run on the tiny bundle's decoder with
 * Debian's python3-onnx (deploy/local/install-python.sh), compared on the CPU provider.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import ort from "onnxruntime-node";

const PYTHON = process.env["FRAMEFARM_PYTHON"] ?? "/usr/bin/python3";
const repo = path.resolve(import.meta.dirname, "../../..");
const decoder = path.join(repo, "test/fixtures/tiny-bundle/vae_decoder.onnx");

async function rewrite(out: string, only?: "pad"): Promise<string> {
  const env = {
    ...process.env,
    PYTHONPATH: path.join(repo, "gpu-node/export"),
    ...(only ? { FRAMEFARM_GRAPH_PASSES: only } : {}),
  };
  const { stdout } = await promisify(execFile)(PYTHON, ["-m", "framefarm_export.graph_passes", decoder, out], { env });
  return stdout;
}

async function decode(file: string): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(file, { logSeverityLevel: 3 });
  const n = 1 * 4 * 3 * 8 * 12;
  const latents = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 2);
  const out = await session.run({ latents: new ort.Tensor("float32", latents, [1, 4, 3, 8, 12]) });
  await session.release();
  return out["sample"]!.data as Float32Array;
}

test("graph passes keep the VAE decoder's values", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-graph-passes-"));
  try {
    const padOnly = path.join(dir, "pad.onnx");
    const both = path.join(dir, "cuda.onnx");
    assert.match(await rewrite(padOnly, "pad"), /'edge_pad_concat': 25/);
    assert.match(await rewrite(both), /'group_norm_reduce_mean': 22/);
    const reference = await decode(decoder);
    assert.deepEqual(await decode(padOnly), reference, "edge Pad as Concat is exact");
    const rewritten = await decode(both);
    let num = 0;
    let den = 0;
    for (let i = 0; i < reference.length; i++) {
      num += (rewritten[i]! - reference[i]!) ** 2;
      den += reference[i]! ** 2;
    }
    assert.ok(Math.sqrt(num / den) < 1e-5, `relative L2 ${Math.sqrt(num / den)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
