/**
 * `framefarm setup cuda`: what it refuses (another ONNX Runtime, a tarball that is not the pinned
 * one, a registry serving something else), the tar reader, and, when the real tarball is in
 * .cache/cuda (where `setup cuda` keeps it), a full install into a scratch folder and an idempotent
 * re-run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import {
  CUDA_PROVIDER_FILES,
  CUDA_PROVIDER_MARKER,
  CUDA_PROVIDER_PACKAGE,
  checkCudaProvider,
} from "../../gpu-node/runtime/cuda-provider.js";
import {
  CUDA_TARBALL_NAME,
  fileDigest,
  setupCudaProvider,
  type CudaSetupOptions,
} from "../../gpu-node/runtime/cuda-setup.js";
import { readElfDynamic } from "../../gpu-node/runtime/elf-dynamic.js";
import { extractFromTgz } from "../../gpu-node/runtime/tar-extract.js";
import { cliPath, repoRoot } from "../support/paths.js";
import { PROVIDER_NEEDED } from "../support/fake-elf.js";

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "framefarm-cuda-setup-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function binDir(root: string): string {
  const bin = path.join(root, "bin");
  mkdirSync(bin, { recursive: true });
  writeFileSync(path.join(bin, "libonnxruntime.so.1"), "");
  return bin;
}

async function rejects(p: Promise<unknown>, status: string, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof FarmError, String(e));
    assert.equal(e.status, status, e.message);
    for (const pattern of patterns) assert.match(e.message, pattern);
    return true;
  });
}

function options(root: string, over: Partial<CudaSetupOptions> = {}): CudaSetupOptions & { lines: string[] } {
  const lines: string[] = [];
  return {
    cacheDir: path.join(root, "cache"),
    binDir: binDir(root),
    onnxruntimeVersion: "1.29.0",
    log: (l) => lines.push(l),
    lines,
    ...over,
  };
}

/** A fake npm: `view` prints the given integrity, `pack` fails (it must never be reached here). */
function fakeNpm(root: string, integrity: string): string {
  const file = path.join(root, "fake-npm");
  writeFileSync(
    file,
    `#!/bin/sh\nif [ "$1" = view ]; then echo '${integrity}'; exit 0; fi\necho "npm pack must not run" >&2; exit 1\n`,
    { mode: 0o755 },
  );
  return file;
}

const gnuTar = ((): boolean => {
  try {
    return execFileSync("tar", ["--version"], { encoding: "utf8" }).includes("GNU tar");
  } catch {
    return false;
  }
})();

test(
  "the tar reader extracts chosen members of ustar, GNU and pax archives, long names included, and hashes them",
  { skip: gnuTar ? false : "GNU tar (which writes the test archives) is not installed" },
  async (t) => {
    const root = scratch(t);
    const src = path.join(root, "src");
    const long = `package/${"deep/".repeat(25)}lib.so`;
    mkdirSync(path.join(src, path.dirname(long)), { recursive: true });
    const big = Buffer.alloc(3 * 1024 * 1024 + 7, 1);
    writeFileSync(path.join(src, long), big);
    mkdirSync(path.join(src, "package", "Plugins"), { recursive: true });
    writeFileSync(path.join(src, "package", "Plugins", "small.so"), "small");
    writeFileSync(path.join(src, "package", "other"), "other");
    for (const format of ["ustar", "gnu", "pax"]) {
      const tgz = path.join(root, `${format}.tgz`);
      execFileSync("tar", [`--format=${format}`, "-czf", tgz, "-C", src, "package"]);
      const out = path.join(root, `out-${format}`);
      mkdirSync(out);
      const wanted = new Map([
        [long, path.join(out, "lib.so")],
        ["package/Plugins/small.so", path.join(out, "small.so")],
      ]);
      const digests = await extractFromTgz(tgz, wanted);
      assert.deepEqual(readFileSync(path.join(out, "lib.so")), big, format);
      assert.equal(readFileSync(path.join(out, "small.so"), "utf8"), "small");
      assert.equal(digests.get(long), await fileDigest(path.join(out, "lib.so"), "sha256", "hex"));
      assert.equal(existsSync(path.join(out, "other")), false);
      await assert.rejects(
        extractFromTgz(tgz, new Map([["package/absent.so", path.join(out, "x")]])),
        /not in the archive: package\/absent\.so/,
      );
    }
  },
);

test("setup refuses another onnxruntime-node version and a folder without libonnxruntime.so.1", async (t) => {
  const root = scratch(t);
  await rejects(
    setupCudaProvider(options(root, { onnxruntimeVersion: "1.28.0" })),
    "FAILED_PRECONDITION",
    /onnxruntime-node is 1\.28\.0/,
    /ONNX Runtime 1\.29\.0's CUDA provider/,
  );
  const empty = path.join(root, "empty");
  mkdirSync(empty);
  await rejects(
    setupCudaProvider(options(root, { binDir: empty })),
    "FAILED_PRECONDITION",
    /holds no libonnxruntime\.so\.1/,
  );
});

test("setup --from a file that is not the pinned tarball: DATA_LOSS with both integrities, nothing installed", async (t) => {
  const root = scratch(t);
  const bogus = path.join(root, "bogus.tgz");
  writeFileSync(bogus, "not the package");
  const o = options(root, { from: bogus });
  await rejects(
    setupCudaProvider(o),
    "DATA_LOSS",
    /--from .*bogus\.tgz is not com\.github\.asus4\.onnxruntime\.linux-x64-gpu@0\.4\.9/,
    new RegExp(CUDA_PROVIDER_PACKAGE.integrity.replace(/[+/]/g, "\\$&")),
  );
  await rejects(
    setupCudaProvider(options(root, { from: path.join(root, "absent.tgz") })),
    "NOT_FOUND",
    /absent\.tgz: no such file/,
  );
  assert.deepEqual(
    CUDA_PROVIDER_FILES.filter((f) => existsSync(path.join(o.binDir!, f.name))),
    [],
  );
});

test("setup drops a corrupt cached tarball and will not download when the registry's integrity differs from the pinned one", async (t) => {
  const root = scratch(t);
  const o = options(root, { npm: fakeNpm(root, "sha512-somethingelse==") });
  mkdirSync(o.cacheDir, { recursive: true });
  writeFileSync(path.join(o.cacheDir, CUDA_TARBALL_NAME), "truncated");
  await rejects(
    setupCudaProvider(o),
    "DATA_LOSS",
    /registry's integrity of com\.github\.asus4\.onnxruntime\.linux-x64-gpu@0\.4\.9 is "sha512-somethingelse=="/,
    /refusing/,
  );
  assert.ok(
    o.lines.some((l) => /cached tarball is not the pinned package.*removing it/.test(l)),
    o.lines.join("\n"),
  );
  assert.equal(existsSync(path.join(o.cacheDir, CUDA_TARBALL_NAME)), false);
  // No npm at all: say how to do without.
  await rejects(
    setupCudaProvider(options(root, { npm: path.join(root, "no-npm-here") })),
    "FAILED_PRECONDITION",
    /not found/,
    /--from FILE/,
  );
});

test("framefarm setup takes only `cuda`", () => {
  const r = spawnSync(process.execPath, [cliPath(), "setup", "gpu"], { encoding: "utf8" });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /error \[INVALID_ARGUMENT\]: usage: framefarm setup cuda/);
  const help = spawnSync(process.execPath, [cliPath(), "setup", "--help"], { encoding: "utf8" });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--from FILE/);
});

const realTarball = path.join(repoRoot(), ".cache", "cuda", CUDA_TARBALL_NAME);

test(
  "setup from the cached real tarball, offline, installs the three libraries with their pinned hashes, then re-runs as a no-op",
  { skip: existsSync(realTarball) ? false : `${realTarball} absent (run npx framefarm setup cuda once)` },
  async (t) => {
    const root = scratch(t);
    // Offline, from the cache folder (a link to the real tarball) with no npm to call.
    const o = options(root, { npm: path.join(root, "no-npm-here") });
    mkdirSync(o.cacheDir, { recursive: true });
    symlinkSync(realTarball, path.join(o.cacheDir, CUDA_TARBALL_NAME));
    const result = await setupCudaProvider(o);
    assert.equal(result.alreadyInstalled, false);
    for (const f of CUDA_PROVIDER_FILES) {
      const p = path.join(o.binDir!, f.name);
      assert.equal(statSync(p).size, f.bytes, f.name);
      assert.equal(await fileDigest(p, "sha256", "hex"), f.sha256, f.name);
      assert.equal(statSync(p).mode & 0o111, 0o111, `${f.name} is executable`);
    }
    assert.equal(JSON.parse(readFileSync(path.join(o.binDir!, CUDA_PROVIDER_MARKER), "utf8")).onnxruntime, "1.29.0");
    assert.ok(
      o.lines.some((l) => l.includes("(cached, no download)")),
      o.lines.join("\n"),
    );
    // What the check reads from the real provider: readelf -d's NEEDED list, no RPATH/RUNPATH.
    const dyn = readElfDynamic(path.join(o.binDir!, "libonnxruntime_providers_cuda.so"));
    assert.deepEqual(dyn.needed, PROVIDER_NEEDED);
    assert.deepEqual([dyn.rpath, dyn.runpath], [[], []]);
    const check = checkCudaProvider({
      binDir: o.binDir!,
      loader: { ldLibraryPath: undefined, cache: new Map(), defaultDirs: [] },
      onnxruntimeVersion: "1.29.0",
    });
    assert.deepEqual(
      check.libraries.map((l) => l.name),
      ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13", "libcuda.so.1", "libcudnn.so.9"],
    );
    // Idempotent: nothing to do, and no tarball needed for it.
    const again = options(root, { binDir: o.binDir!, from: path.join(root, "not-needed.tgz") });
    const second = await setupCudaProvider(again);
    assert.equal(second.alreadyInstalled, true);
    assert.ok(
      again.lines.some((l) => l.includes("nothing to do")),
      again.lines.join("\n"),
    );
    assert.deepEqual(
      readdirSync(o.binDir!).filter((e) => e.startsWith(".framefarm-setup-")),
      [],
      "no scratch folder left",
    );
  },
);
