/**
 * Stage-by-stage comparison of a run with a reference run, with the tolerances of the parity
 * contract: ids exact; noise max |d| <= 1e-6; embeddings, latents and decodes relative L2 <= 1e-3;
 * final frames max |d| <= 2 and mean |d| <= 0.05.
 */
import type { Tensor } from "../../../shared/tensor/tensor.js";
import { toFloat64 } from "../../../shared/tensor/convert.js";

export type Rule = "exact" | "noise" | "relL2" | "frames";

export interface StageResult {
  key: string;
  rule: Rule;
  shape: string;
  /** The measured figure(s), formatted. */
  measured: string;
  limit: string;
  ok: boolean;
}

export function ruleFor(key: string): Rule {
  if (/input_ids|attention_mask|\.indices_|\.(teacache|magcache)_computed$/.test(key)) return "exact";
  if (/\.noise$/.test(key)) return "noise";
  if (key === "frames_uint8") return "frames";
  return "relL2";
}

function shapesEqual(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function compareTensor(key: string, got: Tensor, want: Tensor, rule: Rule = ruleFor(key)): StageResult {
  const shape = `[${want.shape.join(",")}]`;
  if (!shapesEqual(got.shape, want.shape)) {
    return { key, rule, shape, measured: `shape [${got.shape.join(",")}]`, limit: "same shape", ok: false };
  }
  const a = toFloat64(got);
  const b = toFloat64(want);
  let maxAbs = 0;
  let sumAbs = 0;
  let diff2 = 0;
  let ref2 = 0;
  let mismatches = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    const ad = Math.abs(d);
    if (Number.isNaN(d)) maxAbs = Infinity;
    if (ad > maxAbs) maxAbs = ad;
    if (ad !== 0) mismatches++;
    sumAbs += ad;
    diff2 += d * d;
    ref2 += b[i]! * b[i]!;
  }
  switch (rule) {
    case "exact":
      return { key, rule, shape, measured: `${mismatches} differ`, limit: "0 differ", ok: mismatches === 0 };
    case "noise":
      return { key, rule, shape, measured: `max|d| ${maxAbs.toExponential(2)}`, limit: "<= 1e-6", ok: maxAbs <= 1e-6 };
    case "frames": {
      const mean = sumAbs / Math.max(1, a.length);
      return {
        key,
        rule,
        shape,
        measured: `max|d| ${maxAbs} mean|d| ${mean.toFixed(4)}`,
        limit: "<= 2, <= 0.05",
        ok: maxAbs <= 2 && mean <= 0.05,
      };
    }
    case "relL2": {
      const rel = ref2 === 0 ? Math.sqrt(diff2) : Math.sqrt(diff2 / ref2);
      return {
        key,
        rule,
        shape,
        measured: `relL2 ${rel.toExponential(2)}`,
        limit: "<= 1e-3",
        ok: rel <= 1e-3 && Number.isFinite(rel),
      };
    }
  }
}

/** Compares every expected key; a key the run never produced fails. */
export function compareRun(got: ReadonlyMap<string, Tensor>, expected: ReadonlyMap<string, Tensor>): StageResult[] {
  const results: StageResult[] = [];
  for (const [key, want] of expected) {
    const mine = got.get(key);
    if (mine === undefined) {
      results.push({
        key,
        rule: ruleFor(key),
        shape: `[${want.shape.join(",")}]`,
        measured: "not produced",
        limit: "-",
        ok: false,
      });
    } else {
      results.push(compareTensor(key, mine, want));
    }
  }
  return results;
}

export function formatTable(results: readonly StageResult[]): string {
  const rows = results.map((r) => [r.ok ? "ok" : "FAIL", r.key, r.shape, r.measured, r.limit]);
  const header = ["", "stage", "shape", "measured", "limit"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
