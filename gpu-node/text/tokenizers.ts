/**
 * Prompt tokenization for the two text encoders, from the bundle's tokenizer.json files through
 * @huggingface/tokenizers, padded and truncated the way diffusers' pipeline calls the HF
 * tokenizers: the Llama prompt goes through the template, to crop_start + max_sequence_length
 * tokens; the CLIP prompt to 77. Truncation keeps the special tokens and cuts the text.
 */
import { readFile } from "node:fs/promises";
import { Tokenizer } from "@huggingface/tokenizers";
import { FarmError } from "../../shared/errors.js";
import { Tensor, type I64 } from "../../shared/tensor/tensor.js";
import type { Bundle } from "../runtime/bundle.js";

export interface TokenizedPrompt {
  inputIds: I64;
  attentionMask: I64;
  /** True when the prompt did not fit and was cut. */
  truncated: boolean;
}

export interface TextTokenizers {
  tokenizeLlama(prompt: string): TokenizedPrompt;
  tokenizeClip(prompt: string): TokenizedPrompt;
}

/** Python's str.format with one positional {} (doubled braces are literal braces). */
export function applyTemplate(template: string, prompt: string): string {
  let out = "";
  let used = false;
  for (let i = 0; i < template.length; i++) {
    const ch = template[i]!;
    const next = template[i + 1];
    if (ch === "{" && next === "{") { out += "{"; i++; }
    else if (ch === "}" && next === "}") { out += "}"; i++; }
    else if (ch === "{" && next === "}") {
      if (used) throw new FarmError("FAILED_PRECONDITION", "prompt template has more than one {} placeholder");
      out += prompt;
      used = true;
      i++;
    } else if (ch === "{" || ch === "}") throw new FarmError("FAILED_PRECONDITION", `prompt template has an unmatched '${ch}' at ${i}`);
    else out += ch;
  }
  if (!used) throw new FarmError("FAILED_PRECONDITION", "prompt template has no {} placeholder");
  return out;
}

function specialPrefixLength(full: readonly number[], plain: readonly number[]): number {
  for (let o = 0; o + plain.length <= full.length; o++) {
    if (plain.every((id, i) => full[o + i] === id)) return o;
  }
  throw new FarmError("INTERNAL", "tokenizer post-processing reordered the text tokens");
}

class PaddedTokenizer {
  private readonly padId: number;

  constructor(
    private readonly tokenizer: Tokenizer,
    config: Record<string, unknown>,
    private readonly maxLength: number,
    private readonly name: string,
  ) {
    const pad = config["pad_token"];
    const padToken = typeof pad === "string" ? pad : typeof pad === "object" && pad !== null ? String((pad as { content?: unknown }).content) : undefined;
    const id = padToken === undefined ? undefined : tokenizer.token_to_id(padToken);
    if (id === undefined) throw new FarmError("FAILED_PRECONDITION", `${name}: pad token ${JSON.stringify(pad)} is not in the vocabulary`);
    this.padId = id;
  }

  encode(text: string): TokenizedPrompt {
    const plain: number[] = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const full: number[] = this.tokenizer.encode(text, { add_special_tokens: true }).ids;
    // The post-processor wraps the text ids in special tokens: find where the text sits, so that
    // truncation cuts the text and keeps the specials (as HF tokenizers do).
    const before = specialPrefixLength(full, plain);
    const after = full.length - plain.length - before;
    let ids = full;
    let truncated = false;
    if (full.length > this.maxLength) {
      const keep = this.maxLength - before - after;
      if (keep < 0) throw new FarmError("FAILED_PRECONDITION", `${this.name}: max length ${this.maxLength} is shorter than the special tokens`);
      ids = [...full.slice(0, before), ...plain.slice(0, keep), ...full.slice(full.length - after)];
      truncated = true;
    }
    const inputIds = new BigInt64Array(this.maxLength).fill(BigInt(this.padId));
    const mask = new BigInt64Array(this.maxLength);
    ids.forEach((id, i) => {
      inputIds[i] = BigInt(id);
      mask[i] = 1n;
    });
    return { inputIds: new Tensor("int64", [1, this.maxLength], inputIds), attentionMask: new Tensor("int64", [1, this.maxLength], mask), truncated };
  }
}

async function readJson(file: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new FarmError("NOT_FOUND", `${what} ${file} is missing`, { cause: err });
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new FarmError("FAILED_PRECONDITION", `${what} ${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

async function loadTokenizer(bundle: Bundle, tokenizerFile: string, configFile: string, maxLength: number, name: string): Promise<PaddedTokenizer> {
  const json = await readJson(bundle.file(tokenizerFile), `${name} tokenizer`);
  const config = await readJson(bundle.file(configFile), `${name} tokenizer config`);
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(json, config);
  } catch (err) {
    throw new FarmError("FAILED_PRECONDITION", `${name} tokenizer ${tokenizerFile} cannot be loaded: ${(err as Error).message}`, { cause: err });
  }
  return new PaddedTokenizer(tokenizer, config, maxLength, name);
}

export async function loadTextTokenizers(bundle: Bundle): Promise<TextTokenizers> {
  const te = bundle.manifest.text_encoder;
  const te2 = bundle.manifest.text_encoder_2;
  const template = te.prompt_template;
  const llama = await loadTokenizer(bundle, te.tokenizer, te.tokenizer_config, template.crop_start + te.max_sequence_length, "Llama");
  const clip = await loadTokenizer(bundle, te2.tokenizer, te2.tokenizer_config, te2.max_length, "CLIP");
  return {
    tokenizeLlama: (prompt) => llama.encode(applyTemplate(template.template, prompt)),
    tokenizeClip: (prompt) => clip.encode(prompt),
  };
}
