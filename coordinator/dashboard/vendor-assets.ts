/**
 * Browser libraries the dashboard loads, served by the coordinator from their installed npm
 * packages (a dependency like any other, in the images' node_modules too) rather than copied into
 * the repository: Chart.js's self-contained UMD build, which needs no bundler.
 */
import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import path from "node:path";

const require = createRequire(import.meta.url);

/** Served as /static/vendor/<name>: the file of the package, beside its resolved main entry. */
const VENDOR: Record<string, { pkg: string; file: string }> = {
  "chart.umd.min.js": { pkg: "chart.js", file: "chart.umd.min.js" },
};

export const vendorFile = (name: string): string => {
  const v = VENDOR[name];
  if (v === undefined) throw new RangeError(`no vendor file ${name}`);
  return path.join(path.dirname(require.resolve(v.pkg)), v.file);
};

/** Every vendor file's bytes by its name under /static/vendor/. */
export async function readVendorFiles(): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of Object.keys(VENDOR)) out.set(name, await readFile(vendorFile(name)));
  return out;
}
