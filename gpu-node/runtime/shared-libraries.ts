/**
 * Finding a shared library the way glibc's dynamic loader does (ld.so(8)), so that a missing
 * CUDA library is named before ONNX Runtime tries to load its provider. For a library needed by
 * (or dlopen()ed from) an object, the loader looks in order at: the object's DT_RPATH (only when it
 * has no DT_RUNPATH), LD_LIBRARY_PATH, the object's DT_RUNPATH, the ldconfig cache
 * (/etc/ld.so.cache, what `ldconfig -p` lists) and the default directories.
 */
import { execFileSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import path from "node:path";

/** Where the loader looks, apart from the asking object's own paths. */
export interface LoaderEnvironment {
  /** LD_LIBRARY_PATH as set (undefined: unset). */
  ldLibraryPath: string | undefined;
  /** The ldconfig cache: library name to path, for this machine's architecture. */
  cache: ReadonlyMap<string, string>;
  /** The loader's built-in directories. */
  defaultDirs: readonly string[];
}

/** The object asking for the library: its file and its dynamic-section search paths. */
export interface LoadingObject {
  file: string;
  rpath: readonly string[];
  runpath: readonly string[];
}

export interface Resolved {
  path: string;
  /** How the loader gets there: "LD_LIBRARY_PATH", "RUNPATH of X", "ldconfig cache", "default directory". */
  via: string;
}

/** glibc's default directories on x86-64 and aarch64 (Debian/Ubuntu multiarch first). */
export function defaultLibraryDirs(arch: string = process.arch): string[] {
  const triplet = arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
  return [`/lib/${triplet}`, `/usr/lib/${triplet}`, "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
}

/** The `ldconfig -p` flags of this architecture's entries. */
function cacheArchTag(arch: string): string {
  return arch === "arm64" ? "AArch64" : "x86-64";
}

/** Parses `ldconfig -p` output, keeping the entries for `arch` (the first of a name wins, as in the loader). */
export function parseLdconfigOutput(text: string, arch: string = process.arch): Map<string, string> {
  const tag = cacheArchTag(arch);
  const cache = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^\s+(\S+)\s+\(([^)]*)\)(?:\s+OS ABI: [^=]*)?\s+=>\s+(.+?)\s*$/.exec(line);
    if (m === null || !m[2]!.split(",").includes(tag)) continue;
    if (!cache.has(m[1]!)) cache.set(m[1]!, m[3]!);
  }
  return cache;
}

/** The ldconfig cache of this machine (empty when no ldconfig can be run). */
export function readLdconfigCache(): Map<string, string> {
  for (const ldconfig of ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]) {
    if (ldconfig.startsWith("/") && !existsSync(ldconfig)) continue;
    try {
      const out = execFileSync(ldconfig, ["-p"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
        timeout: 10_000,
        maxBuffer: 64 * 1024 * 1024,
      });
      return parseLdconfigOutput(out);
    } catch {
      // Try the next one.
    }
  }
  return new Map();
}

export function currentLoaderEnvironment(): LoaderEnvironment {
  return {
    ldLibraryPath: process.env["LD_LIBRARY_PATH"],
    cache: readLdconfigCache(),
    defaultDirs: defaultLibraryDirs(),
  };
}

/** $ORIGIN (and ${ORIGIN}) of a DT_RPATH/DT_RUNPATH entry is the object's folder. */
function expandOrigin(dir: string, object: LoadingObject): string {
  return dir.replace(/\$(\{ORIGIN\}|ORIGIN)/g, path.dirname(path.resolve(object.file)));
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The search path, in the loader's order, as [directory, how] pairs (the cache comes between). */
function searchDirs(
  object: LoadingObject,
  env: LoaderEnvironment,
): { before: [string, string][]; after: [string, string][] } {
  const name = path.basename(object.file);
  const before: [string, string][] = [];
  if (object.runpath.length === 0)
    for (const d of object.rpath) before.push([expandOrigin(d, object), `RPATH of ${name}`]);
  // An empty LD_LIBRARY_PATH entry means the current directory.
  if (env.ldLibraryPath !== undefined && env.ldLibraryPath !== "") {
    for (const d of env.ldLibraryPath.split(/[:;]/)) before.push([d === "" ? process.cwd() : d, "LD_LIBRARY_PATH"]);
  }
  for (const d of object.runpath) before.push([expandOrigin(d, object), `RUNPATH of ${name}`]);
  return { before, after: env.defaultDirs.map((d) => [d, "default directory"]) };
}

/** Where the loader would find `soname` for `object`, or undefined. A name with a slash is a path. */
export function resolveLibrary(soname: string, object: LoadingObject, env: LoaderEnvironment): Resolved | undefined {
  if (soname.includes("/")) return isFile(soname) ? { path: soname, via: "path" } : undefined;
  const { before, after } = searchDirs(object, env);
  for (const [dir, via] of before) {
    const p = path.join(dir, soname);
    if (isFile(p)) return { path: p, via };
  }
  const cached = env.cache.get(soname);
  if (cached !== undefined && isFile(cached)) return { path: cached, via: "ldconfig cache" };
  for (const [dir, via] of after) {
    const p = path.join(dir, soname);
    if (isFile(p)) return { path: p, via };
  }
  return undefined;
}

/** The places resolveLibrary looks, for an error message. */
export function describeSearch(object: LoadingObject, env: LoaderEnvironment): string {
  const { before, after } = searchDirs(object, env);
  const dirs = (list: [string, string][]): string => list.map(([d]) => d).join(", ");
  const parts: string[] = [];
  if (before.length > 0) parts.push(dirs(before));
  parts.push(`the ldconfig cache (${env.cache.size} libraries)`);
  parts.push(dirs(after));
  return parts.join("; ");
}
