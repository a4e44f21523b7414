/**
 * The committed generated code (ts-proto TypeScript, the descriptor set server reflection serves,
 * the Python client's stubs) must be exactly what `npm run proto` generates.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "../support/paths.js";

const run = promisify(execFile);

async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.name === "__pycache__") continue; // Python's bytecode cache of the stubs, ignored by git
    const rel = path.join(prefix, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out.sort();
}

/** What `npm run proto` (proto/generate.sh) writes, relative to the repository root. */
const GENERATED = ["proto/gen", "shared/clients/python/framefarm"];

test("proto/gen and the Python stubs match a fresh generation", async () => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-proto-"));
  try {
    await run("bash", [path.join(repoRoot(), "proto", "generate.sh"), tmp]);
    for (const dir of GENERATED) {
      const fresh = await listFiles(path.join(tmp, dir));
      const committed = await listFiles(path.join(repoRoot(), dir));
      assert.deepEqual(committed, fresh, `generated file list of ${dir} differs: run \`npm run proto\``);
      for (const f of fresh) {
        const [a, b] = await Promise.all([readFile(path.join(tmp, dir, f)), readFile(path.join(repoRoot(), dir, f))]);
        assert.ok(
          b.equals(a),
          `${dir}/${f} differs from generated code: run \`npm run proto\` and never edit it by hand`,
        );
      }
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
