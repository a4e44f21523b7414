/**
 * Chunked attention (gpu-node/runtime/chunked-attention.ts) on the tiny bundle's VAE: the rewritten
 * graph must give the exported graph's outputs bit for bit, with blocks small enough that the
 * loop runs many times and the last block is partial.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import ort from "onnxruntime-node";
import { rewriteChunkedAttention } from "../../gpu-node/runtime/chunked-attention.js";
import { tinyBundleDir } from "../support/paths.js";

function pseudoRandom(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 16807) % 2147483647;
    out[i] = (s / 2147483647) * 2 - 1;
  }
  return out;
}

async function run(
  model: Uint8Array,
  input: string,
  shape: number[],
  data: Float32Array,
): Promise<Record<string, Float32Array>> {
  const session = await ort.InferenceSession.create(model, { executionProviders: ["cpu"], logSeverityLevel: 3 });
  try {
    const out = await session.run({ [input]: new ort.Tensor("float32", data, shape) });
    return Object.fromEntries(session.outputNames.map((n) => [n, out[n]!.data as Float32Array]));
  } finally {
    await session.release();
  }
}

function assertBitIdentical(a: Record<string, Float32Array>, b: Record<string, Float32Array>): void {
  for (const [name, x] of Object.entries(a)) {
    const y = b[name]!;
    assert.equal(y.length, x.length, name);
    const xa = new Uint32Array(x.buffer, x.byteOffset, x.length);
    const ya = new Uint32Array(y.buffer, y.byteOffset, y.length);
    let differ = 0;
    for (let i = 0; i < xa.length; i++) if (xa[i] !== ya[i]) differ++;
    assert.equal(differ, 0, `${name}: ${differ} of ${x.length} values differ`);
  }
}

const cases: { component: string; input: string; shape: number[] }[] = [
  // 5 latent frames of 6x7 = 210 tokens: 16-row blocks, the last one partial.
  { component: "vae_decoder", input: "latents", shape: [1, 4, 5, 6, 7] },
  { component: "vae_encoder", input: "sample", shape: [1, 3, 5, 48, 56] },
];

for (const c of cases) {
  test(`chunked attention in the tiny ${c.component} is bit-identical to the exported graph`, async () => {
    const model = new Uint8Array(await readFile(path.join(tinyBundleDir(), `${c.component}.onnx`)));
    const { model: chunked, rewritten } = rewriteChunkedAttention(model, { blockBytes: 1024, minRows: 16 });
    assert.equal(rewritten, 1, "the mid-block attention is found");
    const data = pseudoRandom(
      c.shape.reduce((a, b) => a * b, 1),
      7,
    );
    assertBitIdentical(await run(model, c.input, c.shape, data), await run(chunked, c.input, c.shape, data));
  });
}

test("a graph without the pattern is returned as it is", async () => {
  const model = new Uint8Array(await readFile(path.join(tinyBundleDir(), "text_encoder_2.onnx")));
  const r = rewriteChunkedAttention(model, { blockBytes: 1024 });
  assert.equal(r.rewritten, 0);
  assert.equal(r.model, model);
});
