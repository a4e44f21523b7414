import path from "node:path";
import { fileURLToPath } from "node:url";

/** Root of the installed package (this file is dist/coordinator/cli/defaults.js). */
export const packageRoot = (): string => path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** FRAMEFARM_BUNDLE, else the tiny bundle shipped with the repository. */
export const defaultBundleDir = (): string =>
  process.env["FRAMEFARM_BUNDLE"] ?? path.join(packageRoot(), "test", "fixtures", "tiny-bundle");
