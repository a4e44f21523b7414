/**
 * Every public reference case through the embedded pipeline (the code path of `render`), stage by
 * stage against diffusers' tensors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import path from "node:path";
import { checkReferenceCase } from "../../coordinator/cli/check-reference.js";
import { formatTable } from "../../coordinator/parity/compare.js";
import { referenceDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";

const casesDir = path.join(referenceDir(), "cases");
const cases = readdirSync(casesDir).filter((f) => f.endsWith(".json")).sort();

test("the reference folder holds cases", () => assert.ok(cases.length >= 4, `found ${cases.length} cases in ${casesDir}`));

for (const file of cases) {
  test(`reference case ${file} matches diffusers`, async () => {
    const check = await checkReferenceCase(path.join(casesDir, file), tinyBundleDir());
    const table = formatTable(check.results);
    assert.ok(check.passed, `stages out of tolerance:\n${table}`);
    assert.ok(check.results.some((r) => r.key === "frames_uint8"), "frames were compared");
  });
}
