/**
 * A job's LoRAs as its parameters carry them: each file by its SHA-256 (the farm's store keeps it
 * at loras/<sha256>.safetensors), the weight of its delta, and a label. The files' contents are
 * checked where they arrive (coordinator/api/job-loras.ts); these are the parameters' own checks.
 */
import { FarmError } from "../errors.js";

export interface LoraRef {
  /** A label for people: the file's name, or the digest's first 12 digits. */
  name: string;
  /** SHA-256 of the file's bytes, 64 lowercase hex digits. */
  sha256: string;
  /** diffusers' set_adapters weight / kohya's multiplier. */
  weight: number;
}

export const MAX_LORAS = 16;
export const MAX_LORA_WEIGHT = 100;
const SHA256 = /^[0-9a-f]{64}$/;

const bad = (msg: string): FarmError => new FarmError("INVALID_ARGUMENT", msg);

/** "LoRA 2 (style.safetensors)": how messages name a job's LoRA. */
export const loraLabel = (i: number, name?: string): string =>
  `LoRA ${i + 1}${name !== undefined && name !== "" ? ` (${name})` : ""}`;

export function checkLoraWeight(v: unknown, what: string): number {
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n) || Math.abs(n) > MAX_LORA_WEIGHT)
    throw bad(
      `${what}: the weight must be a finite number from -${MAX_LORA_WEIGHT} to ${MAX_LORA_WEIGHT}, got ${JSON.stringify(v)}`,
    );
  return n;
}

/** The LoRAs of a job's parameters ([] when absent). */
export function parseLoraRefs(v: unknown): LoraRef[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw bad("loras must be a list");
  if (v.length > MAX_LORAS) throw bad(`at most ${MAX_LORAS} LoRAs, got ${v.length}`);
  return v.map((raw: unknown, i) => {
    const e = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>;
    const what = loraLabel(i, typeof e["name"] === "string" ? e["name"] : undefined);
    const sha256 = e["sha256"];
    if (typeof sha256 !== "string" || !SHA256.test(sha256))
      throw bad(`${what}: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}`);
    const name = e["name"] === undefined || e["name"] === "" ? sha256.slice(0, 12) : e["name"];
    if (typeof name !== "string" || name.length > 256 || /[\u0000-\u001f]/.test(name))
      throw bad(`${what}: the name must be text of at most 256 characters without control characters`);
    return { name, sha256, weight: checkLoraWeight(e["weight"] ?? 1, what) };
  });
}

/** Where the farm's store keeps a LoRA file. */
export const loraObjectKey = (sha256: string): string => `loras/${sha256}.safetensors`;
