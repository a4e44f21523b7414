/** Where the diffusers reference runs live: FRAMEFARM_REFERENCE, else ../shared/reference beside the repo. */
import { readFileSync } from "node:fs";
import path from "node:path";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { repoRoot } from "./paths.js";

export const referenceDir = (): string => process.env["FRAMEFARM_REFERENCE"] ?? path.resolve(repoRoot(), "..", "shared", "reference");

export const REFERENCE_CASES = ["inverted_3sec", "vanilla_3sec", "inverted_endframe_2sec", "vanilla_cfg_window5"] as const;

export interface ReferenceTensors {
  params: Record<string, unknown>;
  tensors: Map<string, Tensor>;
}

const cache = new Map<string, ReferenceTensors>();

export function loadCaseTensors(name: string): ReferenceTensors {
  let hit = cache.get(name);
  if (hit === undefined) {
    const dir = path.join(referenceDir(), "cases");
    hit = {
      params: JSON.parse(readFileSync(path.join(dir, `${name}.json`), "utf8")) as Record<string, unknown>,
      tensors: decodeSafetensors(readFileSync(path.join(dir, `${name}.safetensors`))).tensors,
    };
    cache.set(name, hit);
  }
  return hit;
}

export function refTensor(name: string, key: string): Tensor {
  const t = loadCaseTensors(name).tensors.get(key);
  if (t === undefined) throw new Error(`reference case ${name} has no tensor ${key}`);
  return t;
}
