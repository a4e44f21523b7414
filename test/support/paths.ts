import path from "node:path";
import { fileURLToPath } from "node:url";

/** Repository root (this file is dist/test/support/paths.js after the build). */
export const repoRoot = (): string => path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const tinyBundleDir = (): string => path.join(repoRoot(), "test", "fixtures", "tiny-bundle");
export const cliPath = (): string => path.join(repoRoot(), "dist", "coordinator", "cli", "main.js");
/** Scratch space for test outputs, ignored by git. */
export const testOutputDir = (): string => path.join(repoRoot(), "test-output");
