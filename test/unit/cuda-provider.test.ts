/**
 * `--ep cuda`'s check, without a GPU: the provider files beside libonnxruntime.so.1, and every
 * library they need found as the dynamic loader would (LD_LIBRARY_PATH, RUNPATH, the ldconfig
 * cache, default directories), in fake library folders of empty files named like the real ones.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import { NotElfError, readElfDynamic } from "../../gpu-node/runtime/elf-dynamic.js";
import {
  parseLdconfigOutput,
  resolveLibrary,
  type LoaderEnvironment,
} from "../../gpu-node/runtime/shared-libraries.js";
import {
  CUDA_PROVIDER_MARKER,
  assertCudaProviderUsable,
  checkCudaProvider,
  onnxruntimeBinDir,
} from "../../gpu-node/runtime/cuda-provider.js";
import { assertExecutionProviderAvailable } from "../../gpu-node/runtime/execution-provider.js";
import { fakeElf, PROVIDER_NEEDED } from "../support/fake-elf.js";

const CUDA_LIBS = [
  "libcudart.so.13",
  "libcublas.so.13",
  "libcublasLt.so.13",
  "libcurand.so.10",
  "libcudnn.so.9",
  "libcuda.so.1",
];

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "framefarm-cuda-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A bin folder as `framefarm setup cuda` leaves it, with a fake provider of the real NEEDED list. */
function fakeBinDir(root: string, elf: Parameters<typeof fakeElf>[0] = { needed: PROVIDER_NEEDED }): string {
  const bin = path.join(root, "bin");
  mkdirSync(bin, { recursive: true });
  writeFileSync(path.join(bin, "libonnxruntime.so.1"), "");
  writeFileSync(
    path.join(bin, "libonnxruntime_providers_shared.so"),
    fakeElf({ soname: "libonnxruntime_providers_shared.so", needed: ["libc.so.6"] }),
  );
  writeFileSync(path.join(bin, "libonnxruntime_providers_cuda.so"), fakeElf(elf));
  return bin;
}

function libDir(root: string, name: string, libs: string[]): string {
  const dir = path.join(root, name);
  mkdirSync(dir, { recursive: true });
  for (const l of libs) writeFileSync(path.join(dir, l), "");
  return dir;
}

const loader = (over: Partial<LoaderEnvironment> = {}): LoaderEnvironment => ({
  ldLibraryPath: undefined,
  cache: new Map(),
  defaultDirs: [],
  ...over,
});

const refused = (fn: () => unknown, ...patterns: RegExp[]): void =>
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FarmError, String(e));
    assert.equal(e.status, "FAILED_PRECONDITION");
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });

test("readElfDynamic reads onnxruntime-node's own libonnxruntime.so.1 as readelf -d does", () => {
  const dyn = readElfDynamic(path.join(onnxruntimeBinDir(), "libonnxruntime.so.1"));
  assert.equal(dyn.soname, "libonnxruntime.so.1");
  assert.deepEqual(dyn.runpath, ["$ORIGIN"]);
  assert.deepEqual(dyn.rpath, []);
  for (const n of ["libc.so.6", "libstdc++.so.6", "libdl.so.2"]) assert.ok(dyn.needed.includes(n), n);
});

test("readElfDynamic: needed, soname, rpath and runpath of a built ELF; not-ELF files are refused", (t) => {
  const dir = scratch(t);
  const file = path.join(dir, "lib.so");
  writeFileSync(
    file,
    fakeElf({ soname: "libx.so.1", needed: ["liba.so.1", "libb.so.2"], rpath: "/r1:/r2", runpath: "$ORIGIN:/opt/x" }),
  );
  assert.deepEqual(readElfDynamic(file), {
    soname: "libx.so.1",
    needed: ["liba.so.1", "libb.so.2"],
    rpath: ["/r1", "/r2"],
    runpath: ["$ORIGIN", "/opt/x"],
  });
  writeFileSync(file, "");
  assert.throws(() => readElfDynamic(file), NotElfError);
  writeFileSync(file, "#!/bin/sh\necho this is not a library, but it is longer than an ELF header...........\n");
  assert.throws(() => readElfDynamic(file), /not an ELF file/);
});

test("ldconfig -p output: this architecture's entries, first one wins", () => {
  const out = [
    "4 libs found in cache `/etc/ld.so.cache'",
    "\tlibcudart.so.13 (libc6,x86-64) => /usr/local/cuda-13.0/targets/x86_64-linux/lib/libcudart.so.13",
    "\tlibcudart.so.13 (libc6,x86-64) => /elsewhere/libcudart.so.13",
    "\tlibcudnn.so.9 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.9",
    "\tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6",
    "\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6",
  ].join("\n");
  assert.deepEqual(
    [...parseLdconfigOutput(out, "x64")],
    [
      ["libcudart.so.13", "/usr/local/cuda-13.0/targets/x86_64-linux/lib/libcudart.so.13"],
      ["libcudnn.so.9", "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"],
      ["libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"],
    ],
  );
});

test("libraries resolve in the loader's order: RPATH (without RUNPATH), LD_LIBRARY_PATH, RUNPATH, cache, default dirs", (t) => {
  const root = scratch(t);
  const [rp, ld, run, cached, def] = ["rpath", "ld", "runpath", "cached", "default"].map((d) =>
    libDir(root, d, ["libcudart.so.13"]),
  );
  const provider = path.join(root, "bin", "libprovider.so");
  mkdirSync(path.dirname(provider));
  const cache = new Map([["libcudart.so.13", path.join(cached!, "libcudart.so.13")]]);
  const full = loader({ ldLibraryPath: `/nonexistent:${ld}`, cache, defaultDirs: [def!] });
  const via = (runpath: string[], env: LoaderEnvironment, rpath: string[] = []): string | undefined =>
    resolveLibrary("libcudart.so.13", { file: provider, rpath, runpath }, env)?.via;
  assert.equal(via([], full, [rp!]), "RPATH of libprovider.so");
  assert.equal(via([run!], full, [rp!]), "LD_LIBRARY_PATH", "RPATH is ignored when RUNPATH is set");
  assert.equal(via([run!], { ...full, ldLibraryPath: undefined }), "RUNPATH of libprovider.so");
  assert.equal(via([], { ...full, ldLibraryPath: undefined }), "ldconfig cache");
  assert.equal(via([], loader({ defaultDirs: [def!] })), "default directory");
  assert.equal(via([], loader()), undefined);
  // $ORIGIN is the object's folder; symbolic links (libcudart.so.13 -> libcudart.so.13.0.96) are followed.
  const origin = path.join(root, "bin", "cuda");
  mkdirSync(origin);
  writeFileSync(path.join(origin, "libcudart.so.13.0.96"), "");
  symlinkSync("libcudart.so.13.0.96", path.join(origin, "libcudart.so.13"));
  assert.deepEqual(
    resolveLibrary("libcudart.so.13", { file: provider, rpath: [], runpath: ["$ORIGIN/cuda"] }, loader()),
    { path: path.join(origin, "libcudart.so.13"), via: "RUNPATH of libprovider.so" },
  );
  symlinkSync("nowhere.so", path.join(origin, "libcublas.so.13"));
  assert.equal(
    resolveLibrary("libcublas.so.13", { file: provider, rpath: [], runpath: ["$ORIGIN/cuda"] }, loader()),
    undefined,
    "a dangling link is not a library",
  );
});

test("--ep cuda without the provider files names the file and the setup command", (t) => {
  const bin = path.join(scratch(t), "bin");
  mkdirSync(bin);
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: loader(), onnxruntimeVersion: "1.29.0" }),
    /libonnxruntime_providers_cuda\.so/,
    /npx framefarm setup cuda/,
    /--ep cpu\|webgpu/,
  );
  writeFileSync(path.join(bin, "libonnxruntime_providers_cuda.so"), fakeElf({ needed: [] }));
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: loader() }),
    /libonnxruntime_providers_shared\.so is missing/,
    /npx framefarm setup cuda/,
  );
});

test("--ep cuda with every CUDA 13 / cuDNN 9 library present passes, and says where each was found", (t) => {
  const root = scratch(t);
  const bin = fakeBinDir(root);
  const cuda = libDir(root, "cuda", CUDA_LIBS);
  const env = loader({ ldLibraryPath: cuda });
  assert.doesNotThrow(() => assertCudaProviderUsable({ binDir: bin, loader: env }));
  const check = checkCudaProvider({ binDir: bin, loader: env });
  assert.deepEqual(
    check.libraries.map((l) => l.name).sort(),
    [...CUDA_LIBS].sort(),
    "the provider's DT_NEEDED (system libraries aside) plus dlopen()ed cuDNN",
  );
  for (const l of check.libraries) assert.deepEqual(l.found, { path: path.join(cuda, l.name), via: "LD_LIBRARY_PATH" });
  assert.equal(
    check.libraries.find((l) => l.name === "libcudnn.so.9")?.neededBy,
    "libonnxruntime_providers_cuda.so (dlopen)",
  );
});

test("--ep cuda names each missing library and how to get it", (t) => {
  const root = scratch(t);
  const bin = fakeBinDir(root);
  const someCuda = libDir(
    root,
    "cuda",
    CUDA_LIBS.filter((l) => l !== "libcudnn.so.9" && l !== "libcublas.so.13"),
  );
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: loader({ ldLibraryPath: someCuda }) }),
    /2 libraries it needs are not found: libcublas\.so\.13, libcudnn\.so\.9/,
    /libcublas\.so\.13 \(needed by libonnxruntime_providers_cuda\.so\): install the CUDA 13 runtime: package libcublas-13-0/,
    /libcudnn\.so\.9 \(needed by libonnxruntime_providers_cuda\.so \(dlopen\)\): install cuDNN 9 for CUDA 13: package libcudnn9-cuda-13/,
    new RegExp(`Searched: ${someCuda.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`),
    /LD_LIBRARY_PATH/,
  );
  const noDriver = libDir(
    root,
    "nodriver",
    CUDA_LIBS.filter((l) => l !== "libcuda.so.1"),
  );
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: loader({ ldLibraryPath: noDriver }) }),
    /libcuda\.so\.1 .*NVIDIA driver/,
  );
  assert.doesNotThrow(() =>
    assertCudaProviderUsable({ binDir: bin, loader: loader({ ldLibraryPath: noDriver }), skipDriver: true }),
  );
});

test("a provider that links cuDNN itself (DT_NEEDED) has it checked once, as needed", (t) => {
  const root = scratch(t);
  const bin = fakeBinDir(root, { needed: ["libcudnn.so.9", ...PROVIDER_NEEDED] });
  const check = checkCudaProvider({ binDir: bin, loader: loader({ ldLibraryPath: libDir(root, "cuda", CUDA_LIBS) }) });
  assert.deepEqual(
    check.libraries.filter((l) => l.name === "libcudnn.so.9").map((l) => l.neededBy),
    ["libonnxruntime_providers_cuda.so"],
  );
});

test("libraries are found through the provider's RUNPATH, the ldconfig cache and the default directories too", (t) => {
  const root = scratch(t);
  const bin = fakeBinDir(root, { needed: PROVIDER_NEEDED, runpath: "$ORIGIN/../cublas" });
  libDir(root, "cublas", ["libcublas.so.13", "libcublasLt.so.13"]);
  const cached = libDir(root, "cached", ["libcudart.so.13", "libcurand.so.10"]);
  const def = libDir(root, "default", ["libcudnn.so.9", "libcuda.so.1"]);
  const env = loader({
    cache: new Map(["libcudart.so.13", "libcurand.so.10"].map((l) => [l, path.join(cached, l)])),
    defaultDirs: [def],
  });
  const check = checkCudaProvider({ binDir: bin, loader: env });
  assert.deepEqual(Object.fromEntries(check.libraries.map((l) => [l.name, l.found?.via])), {
    "libcublas.so.13": "RUNPATH of libonnxruntime_providers_cuda.so",
    "libcublasLt.so.13": "RUNPATH of libonnxruntime_providers_cuda.so",
    "libcudart.so.13": "ldconfig cache",
    "libcurand.so.10": "ldconfig cache",
    "libcuda.so.1": "default directory",
    "libcudnn.so.9": "default directory",
  });
});

test("a broken provider file or one of another ONNX Runtime version is refused with the setup command", (t) => {
  const root = scratch(t);
  const bin = fakeBinDir(root);
  const env = loader({ ldLibraryPath: libDir(root, "cuda", CUDA_LIBS) });
  writeFileSync(path.join(bin, CUDA_PROVIDER_MARKER), JSON.stringify({ onnxruntime: "1.28.0" }));
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: env, onnxruntimeVersion: "1.29.0" }),
    /ONNX Runtime 1\.28\.0's, but onnxruntime-node is 1\.29\.0/,
    /npx framefarm setup cuda/,
  );
  writeFileSync(path.join(bin, CUDA_PROVIDER_MARKER), JSON.stringify({ onnxruntime: "1.29.0" }));
  assert.doesNotThrow(() => assertCudaProviderUsable({ binDir: bin, loader: env, onnxruntimeVersion: "1.29.0" }));
  writeFileSync(path.join(bin, "libonnxruntime_providers_cuda.so"), "");
  refused(
    () => assertCudaProviderUsable({ binDir: bin, loader: env, onnxruntimeVersion: "1.29.0" }),
    /libonnxruntime_providers_cuda\.so is not a usable shared library/,
    /npx framefarm setup cuda/,
  );
});

test("cpu and webgpu need no check; cuda in this installation either passes or says why", () => {
  assert.doesNotThrow(() => assertExecutionProviderAvailable("cpu"));
  assert.doesNotThrow(() => assertExecutionProviderAvailable("webgpu"));
  try {
    assertExecutionProviderAvailable("cuda");
  } catch (e) {
    assert.ok(e instanceof FarmError && e.status === "FAILED_PRECONDITION", String(e));
    assert.match(e.message, /npx framefarm setup cuda|not found/);
  }
});
