/**
 * `framefarm render` refuses a job that cannot fit in memory before doing any work: exit 2,
 * RESOURCE_EXHAUSTED naming needed and available memory, no output file. FRAMEFARM_MEMORY_MB
 * states the memory, so the test needs no machine of a particular size (and renders nothing).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { cliPath, repoRoot, testOutputDir } from "../support/paths.js";

const run = promisify(execFile);

test("render at the default resolution on a node with 1 GiB is refused with RESOURCE_EXHAUSTED", async () => {
  await mkdir(testOutputDir(), { recursive: true });
  const output = path.join(testOutputDir(), "refused.mp4");
  const started = Date.now();
  const result = await run(
    process.execPath,
    [
      cliPath(),
      "render",
      "--image",
      path.join(repoRoot(), "test", "fixtures", "images", "demo.png"),
      "--prompt",
      "too big",
      "--seconds",
      "2",
      "-o",
      output,
    ],
    {
      env: { ...process.env, FRAMEFARM_MEMORY_MB: "1024" },
    },
  ).then(
    () => ({ code: 0, stderr: "" }),
    (err: { code?: number; stderr?: string }) => ({ code: err.code ?? -1, stderr: err.stderr ?? "" }),
  );
  assert.equal(result.code, 2, result.stderr);
  assert.match(
    result.stderr,
    /error \[RESOURCE_EXHAUSTED\]: a 704x544 job of 60 frames needs about \d+\.\d GiB of memory .* has 1\.0 GiB available/,
  );
  assert.ok(!existsSync(output), "no output for a refused job");
  assert.ok(Date.now() - started < 30_000, "refused before any rendering");
});
