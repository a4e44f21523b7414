/**
 * Every reference case through the embedded pipeline (the code path of `render`), stage by stage
 * against diffusers' tensors: the public cases in ../shared/reference, and our own diffusers runs
 * with other values (test/fixtures/reference-cases, made by framefarm_export.reference_cases).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import path from "node:path";
import { checkReferenceCase } from "../../coordinator/cli/check-reference.js";
import { formatTable } from "../../coordinator/cli/parity/compare.js";
import { referenceDir } from "../support/reference.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

const caseDirs = [path.join(referenceDir(), "cases"), path.join(repoRoot(), "test", "fixtures", "reference-cases")];
const cases = caseDirs.flatMap((dir) =>
  readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((f) => path.join(dir, f)),
);

test("both reference folders hold cases", () =>
  assert.ok(cases.length >= 8, `found ${cases.length} cases in ${caseDirs.join(", ")}`));

for (const file of cases) {
  test(`reference case ${path.basename(file)} matches diffusers`, async () => {
    const check = await checkReferenceCase(file, tinyBundleDir());
    const table = formatTable(check.results);
    assert.ok(check.passed, `stages out of tolerance:\n${table}`);
    assert.ok(
      check.results.some((r) => r.key === "frames_uint8"),
      "frames were compared",
    );
  });
}
