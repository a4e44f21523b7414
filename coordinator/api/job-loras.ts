/**
 * A submission's LoRAs: each file read (inline, from the tenant's uploads, or from the farm's store
 * by SHA-256), checked against the bundle's LoRA targets (unknown keys and wrong shapes are
 * INVALID_ARGUMENT naming the key) and named by its SHA-256. Files the store lacks are stored by
 * storeLoras once the whole submission is good, at loras/<sha256>.safetensors, where every node
 * reads them and later jobs may name them by digest. They are never removed with a job.
 */
import { FarmError } from "../../shared/errors.js";
import type { LoraInput, SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import type { BundleManifest } from "../../shared/bundle/manifest.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { validateObjectKey } from "../../shared/store/object-store.js";
import { checkLoraWeight, loraLabel, loraObjectKey, MAX_LORAS, type LoraRef } from "../../shared/job/loras.js";
import { loraTargetsOf, parseLora } from "../../shared/lora/lora-file.js";
import { sha256Hex, type Recipe } from "../../shared/job/recipe.js";

export interface CheckedLoras {
  refs: LoraRef[];
  /** Files to store (the store did not hold them when checked). */
  toStore: { sha256: string; bytes: Uint8Array }[];
}

const bad = (msg: string): FarmError => new FarmError("INVALID_ARGUMENT", msg);

async function loraBytes(
  store: ObjectStore,
  source: NonNullable<LoraInput["source"]>,
  what: string,
  tenant: string,
): Promise<{ bytes: Uint8Array; stored: boolean }> {
  if (source.$case === "data") return { bytes: source.value, stored: false };
  if (source.$case === "objectKey") {
    const key = validateObjectKey(source.value);
    const prefix = `uploads/${tenant}/`;
    if (!key.startsWith(prefix))
      throw new FarmError(
        "PERMISSION_DENIED",
        `${what} object key must be under ${prefix}, got ${JSON.stringify(key)}`,
      );
    return { bytes: await store.get(key), stored: false };
  }
  const sha = source.value;
  if (!/^[0-9a-f]{64}$/.test(sha))
    throw bad(`${what}: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha)}`);
  return { bytes: await heldLora(store, sha, what), stored: true };
}

async function heldLora(store: ObjectStore, sha256: string, what: string): Promise<Uint8Array> {
  try {
    return await store.get(loraObjectKey(sha256));
  } catch (err) {
    if (err instanceof FarmError && err.status === "NOT_FOUND")
      throw new FarmError("NOT_FOUND", `${what}: this farm holds no LoRA with SHA-256 ${sha256}; give its file`);
    throw err;
  }
}

/**
 * The request's LoRAs checked, in order; with a recipe, the recipe's LoRAs (the request may give
 * only their files: each must be one of the recipe's, without a weight).
 */
export async function checkLoras(
  store: ObjectStore,
  manifest: BundleManifest,
  req: SubmitJobRequest,
  tenant: string,
  recipe: Recipe | null,
): Promise<CheckedLoras> {
  const given = req.loras;
  const wanted = recipe?.loras ?? [];
  if (given.length === 0 && wanted.length === 0) return { refs: [], toStore: [] };
  if (given.length > MAX_LORAS) throw bad(`at most ${MAX_LORAS} LoRAs, got ${given.length}`);
  const targets = loraTargetsOf(manifest);
  const hidden = manifest.transformer.num_attention_heads * manifest.transformer.attention_head_dim;
  const toStore = new Map<string, Uint8Array>();
  const files = new Map<string, { bytes: Uint8Array; stored: boolean }>();
  const refs: LoraRef[] = [];
  for (const [i, l] of given.entries()) {
    const what = loraLabel(i, l.name);
    if (l.source === undefined) throw bad(`${what} has no file: give data, object_key or sha256`);
    const file = await loraBytes(store, l.source, what, tenant);
    const sha256 = l.source.$case === "sha256" ? l.source.value : sha256Hex(file.bytes);
    if (recipe !== null) {
      if (!wanted.some((w) => w.sha256 === sha256))
        throw bad(`${what} (SHA-256 ${sha256}) is not one of the recipe's LoRAs`);
      if (l.weight !== undefined) throw bad(`${what}: with a recipe, LoRA weights come from the recipe`);
    }
    parseLora(file.bytes, targets, hidden, what);
    if (!file.stored && (await store.head(loraObjectKey(sha256))) === null) toStore.set(sha256, file.bytes);
    files.set(sha256, file);
    if (l.name.length > 256 || /[\u0000-\u001f]/.test(l.name))
      throw bad(`${what}: the name must be text of at most 256 characters without control characters`);
    refs.push({
      name: l.name !== "" ? l.name : sha256.slice(0, 12),
      sha256,
      weight: checkLoraWeight(l.weight ?? 1, what),
    });
  }
  if (recipe === null) return { refs, toStore: [...toStore].map(([sha256, bytes]) => ({ sha256, bytes })) };
  // A recipe's LoRAs not given with the request must be in the farm's store, and still fit.
  for (const [i, w] of wanted.entries()) {
    if (files.has(w.sha256)) continue;
    const what = loraLabel(i, w.name);
    let bytes: Uint8Array;
    try {
      bytes = await store.get(loraObjectKey(w.sha256));
    } catch (err) {
      if (err instanceof FarmError && err.status === "NOT_FOUND")
        throw new FarmError(
          "FAILED_PRECONDITION",
          `the recipe's ${what} (SHA-256 ${w.sha256}) is not in this farm's store: give its file with the recipe`,
        );
      throw err;
    }
    parseLora(bytes, targets, hidden, what);
    files.set(w.sha256, { bytes, stored: true });
  }
  return {
    refs: wanted.map((w) => ({ name: w.name, sha256: w.sha256, weight: w.weight })),
    toStore: [...toStore].map(([sha256, bytes]) => ({ sha256, bytes })),
  };
}

/** Stores the checked files the store lacked (content-addressed: a racing submission writes the same bytes). */
export async function storeLoras(store: ObjectStore, checked: CheckedLoras): Promise<void> {
  for (const { sha256, bytes } of checked.toStore) await store.putIfAbsent(loraObjectKey(sha256), bytes);
}
