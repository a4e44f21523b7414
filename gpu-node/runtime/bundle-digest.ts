/**
 * A model bundle's digest: one stable `sha256:<hex>` naming exactly the bytes a render depends on,
 * so a recipe can say which bundle made a video and a farm can refuse a recipe made on another.
 *
 * What it covers: the manifest's bytes (which hold every setting and the exporter's SHA-256 of
 * each ONNX graph), then each file the manifest names (ONNX graphs, their external data,
 * tokenizers and their configs) as `path size sha256`, sorted by path. A file up to 64 MiB (graphs,
 * tokenizers: the whole tiny bundle) is hashed whole. A larger one (a real model's external
 * weights: tens of GB) is hashed by its size and 16 evenly spaced 1 MiB samples, first and last
 * included: re-reading 40 GB at every process start would cost minutes, while another set of
 * weights (a different model, a fine-tune, another dtype, a truncated copy) differs in size or in
 * nearly every sample. What the samples cannot see is an edit confined to unsampled bytes of one
 * weight file; `openBundle(dir, { verifyChecksums: true })` checks graphs against the manifest.
 *
 * Computed once per opened bundle (memoised on the Bundle object) and in a few milliseconds for
 * the tiny bundle, a fraction of a second for a real one.
 */
import { createHash } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { COMPONENT_NAMES, MANIFEST_FILE, STEP_CACHE_COMPONENT_NAMES } from "../../shared/bundle/manifest.js";
import type { Bundle } from "./bundle.js";

export const DIGEST_SCHEME = "framefarm-bundle-digest/1";
/** Files up to this size are hashed whole. */
export const WHOLE_FILE_LIMIT = 64 * 2 ** 20;
const SAMPLES = 16;
const SAMPLE_BYTES = 2 ** 20;

const memo = new WeakMap<Bundle, Promise<string>>();

/** Every file of the bundle that a render reads, relative to its folder, sorted. */
export function bundleFiles(bundle: Bundle): string[] {
  const m = bundle.manifest;
  const files = new Set<string>();
  for (const name of [...COMPONENT_NAMES, ...STEP_CACHE_COMPONENT_NAMES]) {
    const c = m.components[name];
    if (c === undefined) continue;
    files.add(c.file);
    if (c.external_data !== null) files.add(c.external_data);
  }
  for (const f of [
    m.text_encoder.tokenizer,
    m.text_encoder.tokenizer_config,
    m.text_encoder_2.tokenizer,
    m.text_encoder_2.tokenizer_config,
  ])
    files.add(f);
  return [...files].sort();
}

/** The content hash of one file: whole when small, sampled (with its size) when large. */
export async function fileHash(file: string): Promise<{ size: number; sha256: string }> {
  const handle = await open(file, "r");
  try {
    const { size } = await handle.stat();
    const hash = createHash("sha256");
    if (size <= WHOLE_FILE_LIMIT) {
      hash.update(await handle.readFile());
      return { size, sha256: hash.digest("hex") };
    }
    hash.update(`sampled ${SAMPLES}x${SAMPLE_BYTES}\n`);
    const buf = Buffer.alloc(SAMPLE_BYTES);
    for (let i = 0; i < SAMPLES; i++) {
      const offset = Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES - 1));
      const { bytesRead } = await handle.read(buf, 0, SAMPLE_BYTES, offset);
      hash.update(buf.subarray(0, bytesRead));
    }
    return { size, sha256: hash.digest("hex") };
  } finally {
    await handle.close();
  }
}

async function compute(bundle: Bundle): Promise<string> {
  const lines = [
    DIGEST_SCHEME,
    `manifest ${createHash("sha256")
      .update(await readFile(bundle.file(MANIFEST_FILE)))
      .digest("hex")}`,
  ];
  for (const rel of bundleFiles(bundle)) {
    const { size, sha256 } = await fileHash(bundle.file(rel));
    lines.push(`${rel} ${size} ${sha256}`);
  }
  return `sha256:${createHash("sha256")
    .update(`${lines.join("\n")}\n`)
    .digest("hex")}`;
}

/** The bundle's digest, computed on first use and remembered for this Bundle object. */
export function bundleDigest(bundle: Bundle): Promise<string> {
  let d = memo.get(bundle);
  if (d === undefined) {
    d = compute(bundle);
    memo.set(bundle, d);
    // A failed read is not remembered: the next call tries again.
    d.catch(() => memo.delete(bundle));
  }
  return d;
}
