import { test } from "node:test";
import assert from "node:assert/strict";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { loadTextTokenizers, applyTemplate } from "../../gpu-node/text/tokenizers.js";
import { FarmError } from "../../shared/errors.js";
import { REFERENCE_CASES, loadCaseTensors } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";

const tokenizers = openBundle(tinyBundleDir()).then(loadTextTokenizers);

for (const name of REFERENCE_CASES) {
  test(`${name}: token ids equal diffusers'`, async () => {
    const t = await tokenizers;
    const { params, tensors } = loadCaseTensors(name);
    const prompts = [params["prompt"], params["negative_prompt"]].filter((p): p is string => typeof p === "string");
    prompts.forEach((p, i) => {
      assert.deepEqual(t.tokenizeLlama(p).inputIds.data, tensors.get(`llama_input_ids${i}`)!.data);
      assert.deepEqual(t.tokenizeLlama(p).attentionMask.data, tensors.get(`llama_attention_mask${i}`)!.data);
      assert.deepEqual(t.tokenizeClip(p).inputIds.data, tensors.get(`clip_input_ids${i}`)!.data);
    });
  });
}

test("long prompts are truncated keeping the special tokens", async () => {
  const t = await tokenizers;
  const short = t.tokenizeClip("a cat");
  const long = t.tokenizeClip("a cat ".repeat(200));
  assert.equal(long.truncated, true);
  assert.equal(short.truncated, false);
  assert.equal(long.inputIds.shape[1], 77);
  assert.equal(long.inputIds.data[0], short.inputIds.data[0], "BOS kept");
  assert.equal(long.inputIds.data[76], short.inputIds.data[3], "EOS kept at the end");
  const llama = t.tokenizeLlama("word ".repeat(1000));
  assert.equal(llama.truncated, true);
  assert.ok(llama.attentionMask.data.every((m) => m === 1n));
});

test("braces, emoji and empty prompts tokenize", async () => {
  const t = await tokenizers;
  for (const p of ["{}", "{{x}}", "🎬🌧️ 夜市", ""]) assert.equal(t.tokenizeLlama(p).inputIds.shape[1], 378);
});

test("templates follow str.format", () => {
  assert.equal(applyTemplate("<{}>", "{x}"), "<{x}>");
  assert.equal(applyTemplate("{{a}} {}", "b"), "{a} b");
  assert.throws(() => applyTemplate("no placeholder", "x"), FarmError);
  assert.throws(() => applyTemplate("{} {}", "x"), /more than one/);
});
