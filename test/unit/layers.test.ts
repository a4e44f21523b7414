/**
 * The layering rule, checked on the sources: gpu-node and shared never import coordinator (the
 * contract between the two sides lives in shared/farm), and the coordinator's own parts (API,
 * dispatcher, planner, dashboard, auth) never import gpu-node: only the CLI (coordinator/cli, with
 * embedded mode in coordinator/cli/embedded) composes the two.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "../support/paths.js";

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() && e.name !== "export" && e.name !== "node_modules") out.push(...tsFiles(p));
    else if (e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

/** Relative module specifiers of static imports, re-exports and dynamic imports. */
export function importsOf(source: string): string[] {
  const specs: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) specs.push(m[1]!);
  return specs.filter((s) => s.startsWith("."));
}

/** Every import from a file under `from` that resolves under one of `forbidden` (repo-relative folders). */
function violations(from: string, forbidden: string[], except: string[] = []): string[] {
  const root = repoRoot();
  const out: string[] = [];
  for (const file of tsFiles(path.join(root, from))) {
    const rel = path.relative(root, file);
    if (except.some((e) => rel.startsWith(e + path.sep))) continue;
    for (const spec of importsOf(readFileSync(file, "utf8"))) {
      const target = path.relative(root, path.resolve(path.dirname(file), spec));
      if (forbidden.some((f) => target === f || target.startsWith(f + path.sep))) out.push(`${rel} imports ${spec}`);
    }
  }
  return out;
}

test("the import scan sees every form of import", () => {
  const src = `import a from "../x.js";\nimport type { B } from "../y.js";\nexport { c } from "./z.js";\nimport "./side.js";\nconst d = await import("../w.js");\nimport {\n  e,\n  f,\n} from "../multi.js";\nimport fs from "node:fs";`;
  assert.deepEqual(importsOf(src).sort(), ["../multi.js", "../w.js", "../x.js", "../y.js", "./side.js", "./z.js"]);
});

test("gpu-node never imports coordinator", () => {
  assert.deepEqual(violations("gpu-node", ["coordinator"]), []);
});

test("shared never imports coordinator or gpu-node", () => {
  assert.deepEqual(violations("shared", ["coordinator", "gpu-node"]), []);
});

test("the coordinator proper never imports gpu-node (only the CLI, with embedded mode, composes them)", () => {
  assert.deepEqual(violations("coordinator", ["gpu-node"], ["coordinator/cli"]), []);
});
