/** framefarm's version, from package.json at the package root (this file is dist/shared/version.js). */
import { createRequire } from "node:module";

export const FRAMEFARM_VERSION: string = (createRequire(import.meta.url)("../../package.json") as { version: string })
  .version;
