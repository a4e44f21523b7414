/**
 * Opens a model bundle folder: reads and validates framefarm-bundle.json and checks that every
 * file it names exists, so a missing file is reported at start-up and not mid-render.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import {
  COMPONENT_NAMES,
  STEP_CACHE_COMPONENT_NAMES,
  MANIFEST_FILE,
  validateManifest,
  type BundleManifest,
  type AnyComponentName,
  type ComponentEntry,
} from "../../shared/bundle/manifest.js";

export interface Bundle {
  readonly dir: string;
  readonly manifest: BundleManifest;
  /** Absolute path of a file named by the manifest (relative to the bundle folder). */
  file(relative: string): string;
  /** A step-cache graph (STEP_CACHE_COMPONENT_NAMES) the bundle lacks: FAILED_PRECONDITION. */
  componentPath(name: AnyComponentName): string;
}

async function requireFile(file: string, what: string): Promise<number> {
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new FarmError("NOT_FOUND", `${what}: ${file} is not a file`);
    return s.size;
  } catch (err) {
    if (err instanceof FarmError) throw err;
    throw new FarmError("NOT_FOUND", `${what}: ${file} is missing`, { cause: err });
  }
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

export interface OpenBundleOptions {
  /** Hash every ONNX file against the manifest (slow for real models: tens of GB). */
  verifyChecksums?: boolean;
}

export async function openBundle(dir: string, options: OpenBundleOptions = {}): Promise<Bundle> {
  const root = path.resolve(dir);
  const manifestPath = path.join(root, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(manifestPath, "utf8");
  } catch (err) {
    throw new FarmError(
      "NOT_FOUND",
      `model bundle ${root}: ${MANIFEST_FILE} is missing (export one with gpu-node/export)`,
      { cause: err },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `model bundle ${manifestPath} is not valid JSON: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const manifest = validateManifest(raw, manifestPath);
  const file = (relative: string): string => path.join(root, relative);

  const checks: Promise<unknown>[] = [];
  const present = (): [AnyComponentName, ComponentEntry][] =>
    [...COMPONENT_NAMES, ...STEP_CACHE_COMPONENT_NAMES].flatMap((n) => {
      const entry = manifest.components[n];
      return entry === undefined ? [] : [[n, entry] as [AnyComponentName, ComponentEntry]];
    });
  for (const [name, entry] of present()) {
    checks.push(requireFile(file(entry.file), `model bundle component ${name}`));
    if (entry.external_data !== null) checks.push(requireFile(file(entry.external_data), `external data of ${name}`));
  }
  for (const [what, rel] of [
    ["Llama tokenizer", manifest.text_encoder.tokenizer],
    ["Llama tokenizer config", manifest.text_encoder.tokenizer_config],
    ["CLIP tokenizer", manifest.text_encoder_2.tokenizer],
    ["CLIP tokenizer config", manifest.text_encoder_2.tokenizer_config],
  ] as const) {
    checks.push(requireFile(file(rel), `model bundle ${what}`));
  }
  await Promise.all(checks);

  if (options.verifyChecksums === true) {
    for (const [name, entry] of present()) {
      if (entry.sha256 === undefined) continue;
      const got = await sha256Of(file(entry.file));
      if (got !== entry.sha256) {
        throw new FarmError(
          "DATA_LOSS",
          `model bundle component ${name} (${entry.file}) is corrupt: sha256 ${got}, manifest says ${entry.sha256}`,
        );
      }
    }
  }

  return {
    dir: root,
    manifest,
    file,
    componentPath: (name) => {
      const entry = manifest.components[name];
      if (entry === undefined)
        throw new FarmError(
          "FAILED_PRECONDITION",
          `model bundle ${root} has no ${name} graph: export it with --step-cache-graphs (or python -m framefarm_export.step_cache_graphs)`,
        );
      return file(entry.file);
    },
  };
}
