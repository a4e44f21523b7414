/**
 * The diffusers reference runs: FRAMEFARM_REFERENCE, else ../shared/reference beside the repository
 * root (this file runs as dist/test/support/reference.js). Every parity test reads cases here.
 */
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { repoRoot } from "./paths.js";

export const referenceDir = (): string =>
  process.env["FRAMEFARM_REFERENCE"] ?? path.resolve(repoRoot(), "..", "shared", "reference");
export const casesDir = (): string => path.join(referenceDir(), "cases");

/** The four cases the reference README documents; listCases() finds any others too. */
export const REFERENCE_CASES = [
  "inverted_3sec",
  "vanilla_3sec",
  "inverted_endframe_2sec",
  "vanilla_cfg_window5",
] as const;

/** A case's call as its JSON records it (README: "A case's JSON holds the call"). */
export interface CaseParams {
  sampling_type: "inverted_anti_drifting" | "vanilla";
  seed: number;
  num_frames: number;
  steps: number;
  prompt: string;
  guidance_scale: number;
  height: number;
  width: number;
  first_image: string;
  last_image: string | null;
  negative_prompt?: string;
  true_cfg_scale?: number;
  latent_window_size?: number;
  frames_shape?: number[];
  [key: string]: unknown;
}

export interface ReferenceCase {
  name: string;
  params: CaseParams;
  tensors: Map<string, Tensor>;
}

/** Case names (JSON files with a safetensors beside them), sorted. */
export function listCases(): string[] {
  const dir = casesDir();
  const files = new Set(readdirSync(dir));
  return [...files]
    .filter((f) => f.endsWith(".json") && files.has(`${f.slice(0, -5)}.safetensors`))
    .map((f) => f.slice(0, -5))
    .sort();
}

const cache = new Map<string, ReferenceCase>();

/** One case's parameters and every stored tensor (decoded once per process). */
export function loadCase(name: string): ReferenceCase {
  let hit = cache.get(name);
  if (hit === undefined) {
    const dir = casesDir();
    hit = {
      name,
      params: JSON.parse(readFileSync(path.join(dir, `${name}.json`), "utf8")) as CaseParams,
      tensors: decodeSafetensors(readFileSync(path.join(dir, `${name}.safetensors`))).tensors,
    };
    cache.set(name, hit);
  }
  return hit;
}

/** Path of a file the case names (first_image, last_image). */
export const caseFile = (file: string): string => path.join(casesDir(), file);

/** Older name of loadCase, kept for existing tests. */
export function loadCaseTensors(name: string): { params: Record<string, unknown>; tensors: Map<string, Tensor> } {
  return loadCase(name);
}

export function refTensor(name: string, key: string): Tensor {
  const t = loadCase(name).tensors.get(key);
  if (t === undefined) throw new Error(`reference case ${name} has no tensor ${key}`);
  return t;
}
