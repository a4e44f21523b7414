/**
 * Prompt tokenization for the two text encoders, exactly as diffusers' HunyuanVideoFramepackPipeline
 * calls the Hugging Face tokenizers:
 *
 * - Llama (`_get_llama_prompt_embeds`): `template.format(prompt)`, then
 *   `tokenizer(text, max_length=crop_start + max_sequence_length, padding="max_length", truncation=True)`.
 *   The post-processor of tokenizer.json adds BOS; truncation cuts the text and keeps the special
 *   tokens; padding is on the right with the config's `pad_token`, attention mask 0 there.
 * - CLIP (`_get_clip_prompt_embeds`): `tokenizer_2(prompt, max_length=77, padding="max_length",
 *   truncation=True)`: BOS + text + EOS, text cut so that EOS stays last. diffusers logs a warning
 *   naming the text cut away; here that warning is returned as `note`.
 *
 * The tokenizers themselves are @huggingface/tokenizers (the pure-JS port of HF `tokenizers`,
 * reading tokenizer.json; it rewrites the Oniguruma split regexes to JS with Oniguruma's `\s` and
 * `(?i:)` meaning). One known, harmless gap: `(?i:'s)` folds ASCII only, so "'ſ" (long s) is not
 * matched as Oniguruma's Unicode folding would.
 *
 * As with HF tokenizers, special-token text typed into a prompt ("<|eot_id|>") is read as that
 * special token: diffusers does the same, so the embeddings stay equal.
 */
import { readFile } from "node:fs/promises";
import { Tokenizer } from "@huggingface/tokenizers";
import { FarmError } from "../../shared/errors.js";
import { Tensor, type I64 } from "../../shared/tensor/tensor.js";
import type { Bundle } from "../runtime/bundle.js";

/** Longest prompt accepted, in UTF-8 bytes (far past what 256 Llama tokens can hold). */
export const MAX_PROMPT_BYTES = 16 * 1024;

export interface TokenizedPrompt {
  /** int64 [1, L], right-padded with the pad token. */
  inputIds: I64;
  /** int64 [1, L], 1 for real tokens (specials included), 0 for padding. */
  attentionMask: I64;
  /** Tokens that are not padding (the specials included). */
  length: number;
  /** True when the prompt did not fit and its end was cut. */
  truncated: boolean;
  /** Set when truncated: what was cut, as diffusers' warning says it. */
  note?: string;
}

export interface TextTokenizers {
  tokenizeLlama(prompt: string): TokenizedPrompt;
  tokenizeClip(prompt: string): TokenizedPrompt;
  /** Token ids back to text (special tokens written out), for notes and checks. */
  decodeLlama(ids: readonly number[]): string;
  decodeClip(ids: readonly number[]): string;
}

/** Everything the tokenizers need, from the bundle manifest or given directly. */
export interface TextTokenizerConfig {
  llama: { tokenizerFile: string; configFile: string; template: string; cropStart: number; maxSequenceLength: number };
  clip: { tokenizerFile: string; configFile: string; maxLength: number };
}

/**
 * A prompt must be text a user meant: well-formed UTF-16 (no lone surrogates, which UTF-8 cannot
 * carry), no NUL, at most MAX_PROMPT_BYTES of UTF-8.
 */
export function validatePrompt(prompt: unknown, what = "prompt"): string {
  if (typeof prompt !== "string") throw new FarmError("INVALID_ARGUMENT", `${what} must be a string`);
  if (!prompt.isWellFormed())
    throw new FarmError("INVALID_ARGUMENT", `${what} is not valid Unicode text (it has an unpaired surrogate)`);
  const nul = prompt.indexOf("\u0000");
  if (nul >= 0) throw new FarmError("INVALID_ARGUMENT", `${what} contains a NUL character (at ${nul})`);
  const bytes = Buffer.byteLength(prompt, "utf8");
  if (bytes > MAX_PROMPT_BYTES) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} is ${bytes} bytes of UTF-8; the limit is ${MAX_PROMPT_BYTES} bytes`,
    );
  }
  return prompt;
}

/**
 * Parses a template for Python's `str.format(prompt)`: exactly one `{}` placeholder, `{{` and `}}`
 * stand for literal braces; anything else with a brace is an error, as Python raises.
 */
export function parseTemplate(template: string): { before: string; after: string } {
  // An empty template (allowed by the manifest) means the prompt is used as it is.
  if (template === "") return { before: "", after: "" };
  const parts: string[] = [];
  let cur = "";
  for (let i = 0; i < template.length; i++) {
    const ch = template[i]!;
    const next = template[i + 1];
    if (ch === "{" && next === "{") {
      cur += "{";
      i++;
    } else if (ch === "}" && next === "}") {
      cur += "}";
      i++;
    } else if (ch === "{" && next === "}") {
      parts.push(cur);
      cur = "";
      i++;
    } else if (ch === "{")
      throw new FarmError(
        "FAILED_PRECONDITION",
        `prompt template: only the {} placeholder is supported, found a field at ${i}`,
      );
    else if (ch === "}")
      throw new FarmError(
        "FAILED_PRECONDITION",
        `prompt template: single '}' at ${i} (write '}}' for a literal brace)`,
      );
    else cur += ch;
  }
  parts.push(cur);
  if (parts.length === 1) throw new FarmError("FAILED_PRECONDITION", "prompt template has no {} placeholder");
  if (parts.length > 2) throw new FarmError("FAILED_PRECONDITION", "prompt template has more than one {} placeholder");
  return { before: parts[0]!, after: parts[1]! };
}

/** Python's `template.format(prompt)` for a template with one `{}`. */
export function applyTemplate(template: string, prompt: string): string {
  const { before, after } = parseTemplate(template);
  return before + prompt + after;
}

function specialPrefixLength(full: readonly number[], plain: readonly number[]): number {
  for (let o = 0; o + plain.length <= full.length; o++) {
    if (plain.every((id, i) => full[o + i] === id)) return o;
  }
  throw new FarmError("INTERNAL", "tokenizer post-processing reordered the text tokens");
}

function tokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null) {
    const content = (value as { content?: unknown }).content;
    if (typeof content === "string") return content;
  }
  return undefined;
}

class PaddedTokenizer {
  readonly padId: number;

  constructor(
    readonly tokenizer: Tokenizer,
    config: Record<string, unknown>,
    readonly maxLength: number,
    private readonly name: string,
    configFile: string,
  ) {
    const padToken = tokenText(config["pad_token"]);
    if (padToken === undefined)
      throw new FarmError("FAILED_PRECONDITION", `${name} tokenizer config ${configFile} has no pad_token`);
    const id = tokenizer.token_to_id(padToken);
    if (id === undefined)
      throw new FarmError(
        "FAILED_PRECONDITION",
        `${name} tokenizer: pad token ${JSON.stringify(padToken)} (${configFile}) is not in the vocabulary`,
      );
    this.padId = id;
    const specials = this.encodeIds("").length;
    if (specials >= maxLength)
      throw new FarmError(
        "FAILED_PRECONDITION",
        `${name} tokenizer: max length ${maxLength} leaves no room past its ${specials} special tokens`,
      );
  }

  encodeIds(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: true }).ids;
  }

  encode(text: string): TokenizedPrompt & { cut: number[] } {
    const plain: number[] = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const full = this.encodeIds(text);
    // The post-processor wraps the text ids in special tokens: find where the text sits, so that
    // truncation cuts the end of the text and keeps the specials, as HF truncation does.
    const before = specialPrefixLength(full, plain);
    const after = full.length - plain.length - before;
    let ids = full;
    let cut: number[] = [];
    if (full.length > this.maxLength) {
      const keep = this.maxLength - before - after;
      ids = [...full.slice(0, before + keep), ...full.slice(full.length - after)];
      cut = plain.slice(keep);
    }
    const inputIds = new BigInt64Array(this.maxLength).fill(BigInt(this.padId));
    const mask = new BigInt64Array(this.maxLength);
    ids.forEach((id, i) => {
      inputIds[i] = BigInt(id);
      mask[i] = 1n;
    });
    return {
      inputIds: new Tensor("int64", [1, this.maxLength], inputIds),
      attentionMask: new Tensor("int64", [1, this.maxLength], mask),
      length: ids.length,
      truncated: cut.length > 0,
      cut,
    };
  }

  decode(ids: readonly number[]): string {
    return this.tokenizer.decode([...ids], { skip_special_tokens: false });
  }
}

async function readJson(file: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new FarmError("NOT_FOUND", `${what} ${file} is missing or unreadable: ${(err as Error).message}`, {
      cause: err,
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FarmError("FAILED_PRECONDITION", `${what} ${file} is not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new FarmError("FAILED_PRECONDITION", `${what} ${file} is not a JSON object`);
  return value as Record<string, unknown>;
}

async function loadTokenizer(
  tokenizerFile: string,
  configFile: string,
  maxLength: number,
  name: string,
): Promise<PaddedTokenizer> {
  const json = await readJson(tokenizerFile, `${name} tokenizer`);
  const config = await readJson(configFile, `${name} tokenizer config`);
  if (typeof json["model"] !== "object" || json["model"] === null)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `${name} tokenizer ${tokenizerFile} has no model section (not a tokenizer.json?)`,
    );
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(json, config);
    tokenizer.encode("a", { add_special_tokens: true });
  } catch (err) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `${name} tokenizer ${tokenizerFile} cannot be loaded: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return new PaddedTokenizer(tokenizer, config, maxLength, name, configFile);
}

/** Loads both tokenizers from explicit files and settings. */
export async function loadTextTokenizersFrom(cfg: TextTokenizerConfig): Promise<TextTokenizers> {
  const { before, after } = parseTemplate(cfg.llama.template);
  const { cropStart, maxSequenceLength } = cfg.llama;
  if (!Number.isInteger(cropStart) || cropStart < 0)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `prompt template crop_start must be a non-negative integer, got ${cropStart}`,
    );
  if (!Number.isInteger(maxSequenceLength) || maxSequenceLength < 1)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `max_sequence_length must be a positive integer, got ${maxSequenceLength}`,
    );
  if (!Number.isInteger(cfg.clip.maxLength) || cfg.clip.maxLength < 2)
    throw new FarmError("FAILED_PRECONDITION", `CLIP max_length must be an integer >= 2, got ${cfg.clip.maxLength}`);
  const llama = await loadTokenizer(
    cfg.llama.tokenizerFile,
    cfg.llama.configFile,
    cropStart + maxSequenceLength,
    "Llama",
  );
  const clip = await loadTokenizer(cfg.clip.tokenizerFile, cfg.clip.configFile, cfg.clip.maxLength, "CLIP");

  // diffusers crops the first crop_start hidden states: they must be the template's own tokens
  // (BOS + the text before {}), or the prompt's embeddings would be cut or padded with template.
  // crop_start 0 means no crop (diffusers: `if crop_start > 0`).
  const prefixTokens = llama.encodeIds(before).length;
  if (cropStart > 0 && prefixTokens !== cropStart) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `prompt template crop_start is ${cropStart}, but the template before {} is ${prefixTokens} tokens with this tokenizer`,
    );
  }

  return {
    tokenizeLlama(prompt) {
      const { cut, ...out } = llama.encode(before + validatePrompt(prompt) + after);
      if (out.truncated) {
        out.note = `the Llama text encoder takes ${maxSequenceLength} prompt tokens; ${cut.length} tokens were cut from the end of the templated prompt: ${JSON.stringify(llama.decode(cut))}`;
      }
      return out;
    },
    tokenizeClip(prompt) {
      const { cut, ...out } = clip.encode(validatePrompt(prompt));
      if (out.truncated) {
        out.note = `The following part of your input was truncated because CLIP can only handle sequences up to ${cfg.clip.maxLength} tokens: ${JSON.stringify(clip.decode(cut))}`;
      }
      return out;
    },
    decodeLlama: (ids) => llama.decode(ids),
    decodeClip: (ids) => clip.decode(ids),
  };
}

/** Loads both tokenizers named by a bundle's manifest. */
export async function loadTextTokenizers(bundle: Bundle): Promise<TextTokenizers> {
  const te = bundle.manifest.text_encoder;
  const te2 = bundle.manifest.text_encoder_2;
  return loadTextTokenizersFrom({
    llama: {
      tokenizerFile: bundle.file(te.tokenizer),
      configFile: bundle.file(te.tokenizer_config),
      template: te.prompt_template.template,
      cropStart: te.prompt_template.crop_start,
      maxSequenceLength: te.max_sequence_length,
    },
    clip: {
      tokenizerFile: bundle.file(te2.tokenizer),
      configFile: bundle.file(te2.tokenizer_config),
      maxLength: te2.max_length,
    },
  });
}
