/** The committed ts-proto output must be exactly what `npm run proto` generates. */
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
    const rel = path.join(prefix, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out.sort();
}

test("proto/gen matches a fresh generation", async () => {
  const protoDir = path.join(repoRoot(), "proto");
  const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-proto-"));
  try {
    await run(path.join(repoRoot(), "node_modules", ".bin", "buf"), ["generate", "-o", tmp], { cwd: protoDir });
    const fresh = await listFiles(path.join(tmp, "gen"));
    const committed = await listFiles(path.join(protoDir, "gen"));
    assert.deepEqual(committed, fresh, "generated file list differs: run `npm run proto`");
    for (const f of fresh) {
      const [a, b] = await Promise.all([readFile(path.join(tmp, "gen", f), "utf8"), readFile(path.join(protoDir, "gen", f), "utf8")]);
      assert.equal(b, a, `proto/gen/${f} differs from generated code: run \`npm run proto\` and never edit it by hand`);
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
