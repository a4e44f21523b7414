/**
 * `framefarm setup cuda`: installs ONNX Runtime's CUDA provider libraries from npm next to
 * onnxruntime-node's libonnxruntime.so.1. The default `npm ci` never downloads them (180 MB).
 *
 * 1. The tarball of the pinned package: `--from FILE`, else the cache folder's copy, else
 *    `npm pack` into the cache folder after `npm view` confirms the registry still serves the pinned
 *    integrity. Whichever it is, its SHA-512 must equal the pinned integrity.
 * 2. The three provider libraries are extracted (tar-extract.ts) into a scratch folder beside
 *    libonnxruntime.so.1, checked against their pinned SHA-256 and renamed into place.
 * Idempotent: libraries already in place with the pinned hashes are left alone, and no tarball is
 * needed then. Offline re-runs work from the cached tarball.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { FarmError } from "../../shared/errors.js";
import { extractFromTgz } from "./tar-extract.js";
import {
  CUDA_PROVIDER_FILES,
  CUDA_PROVIDER_MARKER,
  CUDA_PROVIDER_PACKAGE,
  CUDA_PROVIDER_SPEC,
  onnxruntimeBinDir,
  onnxruntimeNodeVersion,
} from "./cuda-provider.js";

const run = promisify(execFile);

export const CUDA_TARBALL_NAME = `${CUDA_PROVIDER_PACKAGE.name}-${CUDA_PROVIDER_PACKAGE.version}.tgz`;

export interface CudaSetupOptions {
  /** Folder keeping the downloaded tarball for offline re-runs. */
  cacheDir: string;
  /** An already downloaded tarball of the pinned package. */
  from?: string;
  /** Where libonnxruntime.so.1 is (default: onnxruntime-node's folder for this platform). */
  binDir?: string;
  /** The installed onnxruntime-node version (default: read from its package.json). */
  onnxruntimeVersion?: string;
  /** The npm command (default `npm`). */
  npm?: string;
  log: (line: string) => void;
}

export interface CudaSetupResult {
  binDir: string;
  /** True when the libraries were already in place and nothing was written. */
  alreadyInstalled: boolean;
  tarball?: string;
  installed: string[];
}

export async function fileDigest(
  file: string,
  algorithm: "sha256" | "sha512",
  encoding: "hex" | "base64",
): Promise<string> {
  const hash = createHash(algorithm);
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest(encoding);
}

/** npm's integrity string (`sha512-<base64>`) of a file. */
export async function fileIntegrity(file: string): Promise<string> {
  return `sha512-${await fileDigest(file, "sha512", "base64")}`;
}

const mb = (bytes: number): string =>
  bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;

async function providerInPlace(binDir: string): Promise<boolean> {
  for (const f of CUDA_PROVIDER_FILES) {
    const p = path.join(binDir, f.name);
    const s = await stat(p).catch(() => undefined);
    if (s === undefined || !s.isFile() || s.size !== f.bytes) return false;
    if ((await fileDigest(p, "sha256", "hex")) !== f.sha256) return false;
  }
  return true;
}

/** Throws DATA_LOSS unless `file` is the pinned tarball. */
async function verifyTarball(file: string, what: string): Promise<void> {
  const integrity = await fileIntegrity(file);
  if (integrity !== CUDA_PROVIDER_PACKAGE.integrity) {
    throw new FarmError(
      "DATA_LOSS",
      `${what} ${file} is not ${CUDA_PROVIDER_SPEC}: its integrity is ${integrity}, the pinned one ${CUDA_PROVIDER_PACKAGE.integrity}`,
    );
  }
}

async function npmOutput(npm: string, args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run(npm, args, {
      cwd,
      maxBuffer: 16 * 1024 * 1024,
      env: { ...process.env, npm_config_update_notifier: "false" },
    });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === "ENOENT")
      throw new FarmError(
        "FAILED_PRECONDITION",
        `${npm} not found: install npm, or download ${CUDA_PROVIDER_SPEC}'s tarball elsewhere (\`npm pack ${CUDA_PROVIDER_SPEC}\`) and pass it with --from FILE`,
      );
    const detail = (e.stderr ?? e.message)
      .split("\n")
      .filter((l) => l.trim() !== "" && !l.includes("Unknown project config"))
      .slice(-6)
      .join("\n");
    throw new FarmError(
      "UNAVAILABLE",
      `\`${npm} ${args.join(" ")}\` failed: ${detail}\nWithout access to the npm registry, download the tarball elsewhere (\`npm pack ${CUDA_PROVIDER_SPEC}\`) and pass it with --from FILE`,
    );
  }
}

/** Downloads the pinned tarball into the cache folder with `npm pack`, checking the registry's integrity first. */
async function download(cacheDir: string, npm: string, log: (line: string) => void): Promise<string> {
  await mkdir(cacheDir, { recursive: true });
  const registryIntegrity = (await npmOutput(npm, ["view", CUDA_PROVIDER_SPEC, "dist.integrity"], cacheDir)).trim();
  if (registryIntegrity !== CUDA_PROVIDER_PACKAGE.integrity) {
    throw new FarmError(
      "DATA_LOSS",
      `the npm registry's integrity of ${CUDA_PROVIDER_SPEC} is ${JSON.stringify(registryIntegrity)}, not the pinned ${CUDA_PROVIDER_PACKAGE.integrity}: refusing to install it`,
    );
  }
  log(`downloading ${CUDA_PROVIDER_SPEC} (${mb(CUDA_PROVIDER_PACKAGE.tarballBytes)}) with npm pack into ${cacheDir}`);
  await npmOutput(
    npm,
    ["pack", CUDA_PROVIDER_SPEC, "--pack-destination", cacheDir, "--ignore-scripts", "--silent"],
    cacheDir,
  );
  const file = path.join(cacheDir, CUDA_TARBALL_NAME);
  if (!existsSync(file)) throw new FarmError("INTERNAL", `npm pack ${CUDA_PROVIDER_SPEC} wrote no ${file}`);
  return file;
}

/** Installs the provider libraries; see the file comment. */
export async function setupCudaProvider(options: CudaSetupOptions): Promise<CudaSetupResult> {
  const { log } = options;
  if (options.binDir === undefined && (process.platform !== "linux" || process.arch !== "x64")) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `the CUDA provider package is for linux/x64; this is ${process.platform}/${process.arch}`,
    );
  }
  const ortVersion = options.onnxruntimeVersion ?? onnxruntimeNodeVersion();
  if (ortVersion !== CUDA_PROVIDER_PACKAGE.onnxruntime) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `onnxruntime-node is ${ortVersion}, but ${CUDA_PROVIDER_SPEC} holds ONNX Runtime ${CUDA_PROVIDER_PACKAGE.onnxruntime}'s CUDA provider, which loads only into that version: install onnxruntime-node@${CUDA_PROVIDER_PACKAGE.onnxruntime} (package.json pins it)`,
    );
  }
  const binDir = options.binDir ?? onnxruntimeBinDir();
  if (!existsSync(path.join(binDir, "libonnxruntime.so.1"))) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `${binDir} holds no libonnxruntime.so.1: reinstall onnxruntime-node (npm ci)`,
    );
  }
  await removeScratch(binDir);
  log(
    `provider: ${CUDA_PROVIDER_SPEC} (${CUDA_PROVIDER_PACKAGE.license}), ONNX Runtime ${CUDA_PROVIDER_PACKAGE.onnxruntime}'s CUDA 13 execution provider, for onnxruntime-node ${ortVersion}`,
  );
  if (await providerInPlace(binDir)) {
    log(
      `already installed in ${binDir} (${CUDA_PROVIDER_FILES.map((f) => f.name).join(", ")}: sizes and SHA-256 match): nothing to do`,
    );
    if (!existsSync(path.join(binDir, CUDA_PROVIDER_MARKER))) await writeMarker(binDir, ortVersion);
    return { binDir, alreadyInstalled: true, installed: [] };
  }

  let tarball: string;
  if (options.from !== undefined) {
    tarball = path.resolve(options.from);
    if (!existsSync(tarball)) throw new FarmError("NOT_FOUND", `--from ${tarball}: no such file`);
    await verifyTarball(tarball, "--from");
    log(
      `tarball: ${tarball} (given with --from), integrity ${CUDA_PROVIDER_PACKAGE.integrity.slice(0, 19)}... matches the pinned one`,
    );
  } else {
    const cached = path.join(options.cacheDir, CUDA_TARBALL_NAME);
    let usable = false;
    if (existsSync(cached)) {
      try {
        await verifyTarball(cached, "the cached tarball");
        usable = true;
        log(`tarball: ${cached} (cached, no download), integrity matches the pinned one`);
      } catch (err) {
        log(
          `the cached tarball is not the pinned package (${(err as Error).message}): removing it and downloading again`,
        );
        await rm(cached, { force: true });
      }
    }
    if (!usable) {
      const downloaded = await download(options.cacheDir, options.npm ?? "npm", log);
      try {
        await verifyTarball(downloaded, "the downloaded tarball");
      } catch (err) {
        await rm(downloaded, { force: true });
        throw err;
      }
      log(`tarball: ${downloaded} (downloaded), integrity matches the pinned one and the registry's`);
    }
    tarball = cached;
  }

  // Extract beside libonnxruntime.so.1 (same file system), so that each library is renamed into place whole.
  const scratch = await mkdtemp(path.join(binDir, ".framefarm-setup-")).catch((err: NodeJS.ErrnoException) => {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `cannot write to ${binDir} (${err.code ?? err.message}): run setup as the user who installed node_modules`,
    );
  });
  const installed: string[] = [];
  try {
    let digests: Map<string, string>;
    try {
      digests = await extractFromTgz(
        tarball,
        new Map(CUDA_PROVIDER_FILES.map((f) => [f.member, path.join(scratch, f.name)])),
      );
    } catch (err) {
      throw new FarmError("DATA_LOSS", `extracting ${tarball} failed: ${(err as Error).message}`);
    }
    for (const f of CUDA_PROVIDER_FILES) {
      const digest = digests.get(f.member);
      if (digest !== f.sha256)
        throw new FarmError("DATA_LOSS", `${f.member} in ${tarball} has SHA-256 ${digest}, not the pinned ${f.sha256}`);
    }
    for (const f of CUDA_PROVIDER_FILES) {
      const target = path.join(binDir, f.name);
      await chmod(path.join(scratch, f.name), 0o755);
      await rename(path.join(scratch, f.name), target);
      installed.push(target);
      log(`installed ${target} (${mb(f.bytes)}, SHA-256 ${f.sha256.slice(0, 12)}...)`);
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  await writeMarker(binDir, ortVersion);
  return { binDir, alreadyInstalled: false, tarball, installed };
}

async function writeMarker(binDir: string, ortVersion: string): Promise<void> {
  const marker = {
    package: CUDA_PROVIDER_PACKAGE.name,
    version: CUDA_PROVIDER_PACKAGE.version,
    integrity: CUDA_PROVIDER_PACKAGE.integrity,
    onnxruntime: ortVersion,
    files: CUDA_PROVIDER_FILES.map((f) => ({ name: f.name, sha256: f.sha256 })),
  };
  await writeFile(path.join(binDir, CUDA_PROVIDER_MARKER), `${JSON.stringify(marker, null, 2)}\n`);
}

/** Leftover scratch folders of an interrupted setup (removed by the next run). */
export async function removeScratch(binDir: string): Promise<void> {
  for (const e of await readdir(binDir).catch(() => [] as string[]))
    if (e.startsWith(".framefarm-setup-")) await rm(path.join(binDir, e), { recursive: true, force: true });
}
