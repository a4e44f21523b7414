/**
 * Prompt tokenization: the reference cases are the exact checks (diffusers' token ids); other
 * prompts (long, unicode, empty, braces) are checked for structure and by decoding back.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import {
  loadTextTokenizers,
  loadTextTokenizersFrom,
  applyTemplate,
  parseTemplate,
  validatePrompt,
  MAX_PROMPT_BYTES,
  type TextTokenizerConfig,
  type TokenizedPrompt,
} from "../../gpu-node/text/tokenizers.js";
import { FarmError, type StatusName } from "../../shared/errors.js";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { REFERENCE_CASES, loadCase, referenceDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";

const tiny = path.join(referenceDir(), "tiny-framepack");
const template = JSON.parse(readFileSync(path.join(tiny, "framepack_prompt_template.json"), "utf8")) as {
  template: string;
  crop_start: number;
};
const referenceConfig = (): TextTokenizerConfig => ({
  llama: {
    tokenizerFile: path.join(tiny, "tokenizer", "tokenizer.json"),
    configFile: path.join(tiny, "tokenizer", "tokenizer_config.json"),
    template: template.template,
    cropStart: template.crop_start,
    maxSequenceLength: 256,
  },
  clip: {
    tokenizerFile: path.join(tiny, "tokenizer_2", "tokenizer.json"),
    configFile: path.join(tiny, "tokenizer_2", "tokenizer_config.json"),
    maxLength: 77,
  },
});
const fromReference = loadTextTokenizersFrom(referenceConfig());
const fromBundle = openBundle(tinyBundleDir()).then(loadTextTokenizers);

const L = 122 + 256;
const BOS = 0n; // <|begin_of_text|>
const PAD = 1n; // <|end_of_text|>
const CLIP_BOS = 0n;
const CLIP_EOS = 2n; // <|endoftext|>, also CLIP's pad

const ids = (t: TokenizedPrompt): bigint[] => [...t.inputIds.data];
const real = (t: TokenizedPrompt): number[] => ids(t).slice(0, t.length).map(Number);
const isStatus =
  (status: StatusName, pattern: RegExp) =>
  (e: unknown): boolean =>
    e instanceof FarmError && e.status === status && pattern.test(e.message);

/** A well-formed padded row: 1s then 0s, pad after `length`. */
function assertPadded(t: TokenizedPrompt, len: number, pad: bigint): void {
  assert.equal(t.inputIds.dtype, "int64");
  assert.equal(t.attentionMask.dtype, "int64");
  assert.deepEqual(t.inputIds.shape, [1, len]);
  assert.deepEqual(t.attentionMask.shape, [1, len]);
  const mask = [...t.attentionMask.data];
  assert.deepEqual(
    mask,
    Array.from({ length: len }, (_, i) => (i < t.length ? 1n : 0n)),
  );
  assert.ok(
    ids(t)
      .slice(t.length)
      .every((id) => id === pad),
  );
}

for (const name of REFERENCE_CASES) {
  test(`${name}: token ids equal diffusers' exactly`, async () => {
    const { params, tensors } = loadCase(name);
    const prompts = [params.prompt, params.negative_prompt].filter((p): p is string => typeof p === "string");
    if (name === "vanilla_cfg_window5") assert.equal(prompts.length, 2, "the CFG case has a negative prompt");
    for (const t of [await fromReference, await fromBundle]) {
      prompts.forEach((p, i) => {
        const want = (key: string): Tensor => {
          const v = tensors.get(`${key}${i}`);
          assert.ok(v, `reference has ${key}${i}`);
          return v;
        };
        const llama = t.tokenizeLlama(p);
        assert.deepEqual(llama.inputIds.shape, want("llama_input_ids").shape);
        assert.deepEqual(llama.inputIds.data, want("llama_input_ids").data);
        assert.deepEqual(llama.attentionMask.data, want("llama_attention_mask").data);
        assert.equal(llama.truncated, false);
        const clip = t.tokenizeClip(p);
        assert.deepEqual(clip.inputIds.shape, want("clip_input_ids").shape);
        assert.deepEqual(clip.inputIds.data, want("clip_input_ids").data);
      });
    }
  });
}

test("Llama: template + prompt, BOS first, padded right to crop_start + 256", async () => {
  const t = await fromReference;
  for (const p of ["a cat", "", '🎬🌧️ 夜市, naïve café — "quotes" \t tabs\nnew line', "{}", "{{x}} }{ {0} {name}"]) {
    const out = t.tokenizeLlama(p);
    assertPadded(out, L, PAD);
    assert.equal(out.inputIds.data[0], BOS);
    assert.equal(out.truncated, false);
    assert.equal(out.note, undefined);
    // Decoding the real tokens gives back BOS + the templated prompt, braces and all, untouched.
    assert.equal(t.decodeLlama(real(out)), `<|begin_of_text|>${applyTemplate(template.template, p)}`);
  }
  // The template alone is crop_start tokens; the empty prompt adds only the template's tail.
  const empty = t.tokenizeLlama("");
  assert.ok(empty.length > template.crop_start && empty.length < template.crop_start + 5);
});

test("Llama: the template's tokens are the same whatever the prompt (crop_start is right)", async () => {
  const t = await fromReference;
  const a = ids(t.tokenizeLlama("a red fox")).slice(0, template.crop_start);
  const b = ids(t.tokenizeLlama("Ünïcödé 😀 and {braces}")).slice(0, template.crop_start);
  assert.deepEqual(a, b);
});

test("Llama: prompts past 256 tokens are cut at the end, keeping BOS, as HF truncation does", async () => {
  const t = await fromReference;
  const long = "word ".repeat(1000);
  const out = t.tokenizeLlama(long);
  assertPadded(out, L, PAD);
  assert.equal(out.length, L);
  assert.equal(out.truncated, true);
  assert.equal(out.inputIds.data[0], BOS);
  assert.match(out.note ?? "", /256 prompt tokens/);
  // Cutting keeps a prefix: more text after the cut changes nothing.
  assert.deepEqual(ids(t.tokenizeLlama(`${long} and a different ending 😀`)), ids(out));
  // The kept tokens decode to the start of the templated prompt (the template's <|eot_id|> is cut too).
  const text = t.decodeLlama(real(out));
  assert.ok(`<|begin_of_text|>${applyTemplate(template.template, long)}`.startsWith(text));
  assert.ok(!text.endsWith("<|eot_id|>"));
});

test("CLIP: BOS + text + EOS, padded to 77 with the pad token", async () => {
  const t = await fromReference;
  const empty = t.tokenizeClip("");
  assertPadded(empty, 77, CLIP_EOS);
  assert.deepEqual(ids(empty).slice(0, 2), [CLIP_BOS, CLIP_EOS]);
  assert.equal(empty.length, 2);
  for (const p of ["a cat", "🎬🌧️ 夜市", "{}"]) {
    const out = t.tokenizeClip(p);
    assertPadded(out, 77, CLIP_EOS);
    assert.equal(out.inputIds.data[0], CLIP_BOS);
    assert.equal(out.inputIds.data[out.length - 1], CLIP_EOS);
    assert.equal(out.truncated, false);
  }
});

test("CLIP: truncation keeps EOS last; exactly 77 tokens is not truncated; the note names what was cut", async () => {
  const t = await fromReference;
  // This tiny CLIP vocabulary has no merges: each letter of a word is one token.
  const n = t.tokenizeClip("abc").length - 2;
  assert.equal(n, 3);
  const fits = t.tokenizeClip("a".repeat(75));
  assert.equal(fits.length, 77);
  assert.equal(fits.truncated, false);
  assert.equal(fits.note, undefined);
  const over = t.tokenizeClip("a".repeat(76));
  assert.equal(over.truncated, true);
  assert.equal(over.length, 77);
  assert.equal(over.inputIds.data[0], CLIP_BOS);
  assert.equal(over.inputIds.data[76], CLIP_EOS);
  assert.ok(over.attentionMask.data.every((m) => m === 1n));
  assert.match(over.note ?? "", /CLIP can only handle sequences up to 77 tokens/);
  const long = t.tokenizeClip("a cat ".repeat(200));
  assert.equal(long.truncated, true);
  assert.equal(long.inputIds.data[76], CLIP_EOS);
});

test("prompts must be text: no lone surrogates, no NUL, at most 16 KiB of UTF-8", async () => {
  const t = await fromReference;
  for (const tokenize of [t.tokenizeLlama, t.tokenizeClip]) {
    assert.throws(() => tokenize("bad \uD800 surrogate"), isStatus("INVALID_ARGUMENT", /unpaired surrogate/));
    assert.throws(() => tokenize("low \uDC00"), isStatus("INVALID_ARGUMENT", /unpaired surrogate/));
    assert.throws(() => tokenize("nul\u0000byte"), isStatus("INVALID_ARGUMENT", /NUL/));
    assert.throws(
      () => tokenize("é".repeat(MAX_PROMPT_BYTES / 2 + 1)),
      isStatus("INVALID_ARGUMENT", /16386 bytes.*limit is 16384 bytes/),
    );
  }
  assert.equal(MAX_PROMPT_BYTES, 16384);
  assert.equal(
    t.tokenizeLlama("é".repeat(MAX_PROMPT_BYTES / 2)).truncated,
    true,
    "16 KiB exactly is accepted (and cut)",
  );
  assert.equal(validatePrompt("😀 paired surrogates are fine"), "😀 paired surrogates are fine");
  assert.throws(() => validatePrompt(42), isStatus("INVALID_ARGUMENT", /string/));
});

test("templates follow Python's str.format with one {}", () => {
  assert.equal(applyTemplate("<{}>", "{x}"), "<{x}>");
  assert.equal(applyTemplate("{{a}} {}", "b"), "{a} b");
  assert.equal(applyTemplate("{}}}{{", "p"), "p}{");
  assert.equal(applyTemplate("", "as is"), "as is");
  assert.deepEqual(parseTemplate("A{}B"), { before: "A", after: "B" });
  assert.throws(() => applyTemplate("no placeholder", "x"), isStatus("FAILED_PRECONDITION", /no \{\} placeholder/));
  assert.throws(() => applyTemplate("{} {}", "x"), /more than one/);
  assert.throws(() => applyTemplate("{0}", "x"), isStatus("FAILED_PRECONDITION", /only the \{\} placeholder/));
  assert.throws(() => applyTemplate("{} }", "x"), isStatus("FAILED_PRECONDITION", /single '\}'/));
});

test("missing or broken tokenizer files are reported by name", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "framefarm-tok-"));
  const base = referenceConfig();
  const missing = path.join(dir, "nope", "tokenizer.json");
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, llama: { ...base.llama, tokenizerFile: missing } }),
    isStatus("NOT_FOUND", /Llama tokenizer .*nope\/tokenizer\.json/),
  );
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, clip: { ...base.clip, configFile: path.join(dir, "missing_config.json") } }),
    isStatus("NOT_FOUND", /CLIP tokenizer config .*missing_config\.json/),
  );
  const corrupt = path.join(dir, "corrupt.json");
  writeFileSync(corrupt, readFileSync(base.llama.tokenizerFile, "utf8").slice(0, 500));
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, llama: { ...base.llama, tokenizerFile: corrupt } }),
    isStatus("FAILED_PRECONDITION", /corrupt\.json is not valid JSON/),
  );
  const notTokenizer = path.join(dir, "other.json");
  writeFileSync(notTokenizer, JSON.stringify({ hello: "world" }));
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, clip: { ...base.clip, tokenizerFile: notTokenizer } }),
    isStatus("FAILED_PRECONDITION", /other\.json/),
  );
  const noPad = path.join(dir, "tokenizer_config.json");
  const cfg = JSON.parse(readFileSync(base.llama.configFile, "utf8")) as Record<string, unknown>;
  delete cfg["pad_token"];
  writeFileSync(noPad, JSON.stringify(cfg));
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, llama: { ...base.llama, configFile: noPad } }),
    isStatus("FAILED_PRECONDITION", /no pad_token/),
  );
  copyFileSync(base.llama.configFile, noPad);
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, llama: { ...base.llama, cropStart: 95 } }),
    isStatus("FAILED_PRECONDITION", /crop_start is 95.*122 tokens/),
  );
  await assert.rejects(
    loadTextTokenizersFrom({ ...base, llama: { ...base.llama, template: "no placeholder" } }),
    isStatus("FAILED_PRECONDITION", /placeholder/),
  );
});
