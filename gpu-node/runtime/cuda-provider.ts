/**
 * ONNX Runtime's CUDA execution provider, as framefarm installs it: the provider libraries of
 * Microsoft's ONNX Runtime 1.29.0 build for CUDA 13, taken from the npm package
 * com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 (MIT) by `framefarm setup cuda` and placed
 * beside onnxruntime-node's libonnxruntime.so.1, which loads them from its own folder. A provider
 * loads only into the ONNX Runtime version it was built with, hence the exact pins.
 *
 * The check here runs before any session is created: the provider files, and every library they
 * need, resolved as the dynamic loader would (shared-libraries.ts), each missing one named with
 * how to get it.
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import { NotElfError, readElfDynamic } from "./elf-dynamic.js";
import {
  currentLoaderEnvironment,
  describeSearch,
  resolveLibrary,
  type LoaderEnvironment,
  type LoadingObject,
} from "./shared-libraries.js";

/** The pinned provider package. `integrity` is the registry's dist.integrity of this version. */
export const CUDA_PROVIDER_PACKAGE = {
  name: "com.github.asus4.onnxruntime.linux-x64-gpu",
  version: "0.4.9",
  integrity: "sha512-FopIhNE/Ng+v2X65wVc9clPCBCvhvA53Hxo2U0Kf5fGdVsC7iCA+mZ0KLWggcQAj7TIZ6pNidR4AC10g74Xo6w==",
  /** The ONNX Runtime release the package's libraries are built from; onnxruntime-node must be the same. */
  onnxruntime: "1.29.0",
  /** The CUDA and cuDNN major versions the provider is built for (its libcudart.so.13; cuDNN 9 by dlopen). */
  cuda: "13",
  cudnn: "9",
  tarballBytes: 179_145_956,
  license: "MIT",
} as const;

export const CUDA_PROVIDER_SPEC = `${CUDA_PROVIDER_PACKAGE.name}@${CUDA_PROVIDER_PACKAGE.version}`;

/** The three provider libraries, where they are in the package, their sizes and SHA-256. */
export const CUDA_PROVIDER_FILES = [
  {
    name: "libonnxruntime_providers_shared.so",
    member: "package/Plugins/Linux/x64/libonnxruntime_providers_shared.so",
    bytes: 14_632,
    sha256: "c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772",
  },
  {
    name: "libonnxruntime_providers_cuda.so",
    member: "package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so",
    bytes: 229_780_440,
    sha256: "56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037",
  },
  {
    name: "libonnxruntime_providers_tensorrt.so",
    member: "package/Plugins/Linux/x64/libonnxruntime_providers_tensorrt.so",
    bytes: 859_144,
    sha256: "ef6071798a339038ad66c428fb1a809cf8e499bffc3b6870e4e8bc4f4c6a6320",
  },
] as const;

export const CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so";
/** The files `--ep cuda` needs (TensorRT's provider is installed too, but framefarm does not use it). */
export const CUDA_PROVIDER_REQUIRED = ["libonnxruntime_providers_shared.so", CUDA_PROVIDER_LIBRARY] as const;
/** Written beside the libraries by setup: which package and ONNX Runtime version they came from. */
export const CUDA_PROVIDER_MARKER = "framefarm-cuda-provider.json";

export const SETUP_COMMAND = "npx framefarm setup cuda";

/**
 * Libraries the provider loads with dlopen() rather than DT_NEEDED, which readelf does not show:
 * cuDNN (ONNX Runtime's cudnn_loader tries libcudnn.so.9, then libcudnn.so), needed for
 * convolutions (the VAE).
 */
export const CUDA_PROVIDER_DLOPENED = ["libcudnn.so.9"] as const;

/** glibc, libstdc++ and libgcc: on every host that runs Node.js itself. */
const SYSTEM_LIBRARIES = new Set([
  "libc.so.6",
  "libm.so.6",
  "libdl.so.2",
  "librt.so.1",
  "libpthread.so.0",
  "libstdc++.so.6",
  "libgcc_s.so.1",
  "ld-linux-x86-64.so.2",
  "ld-linux-aarch64.so.1",
]);

/** The NVIDIA driver's library: a host library, mounted into containers by the NVIDIA container toolkit. */
export const CUDA_DRIVER_LIBRARY = "libcuda.so.1";

const CUDA_REPO = "NVIDIA's CUDA apt repository (https://developer.download.nvidia.com/compute/cuda/repos/)";

/**
 * How to get a library the provider needs. `cuda` is the CUDA major version the provider is built
 * for (13 for the pinned package; read from its libcudart.so.N).
 */
export function libraryHint(soname: string, cuda = "13"): string {
  const major = /\.so\.(\d+)$/.exec(soname)?.[1];
  const runtime = (pkg: string): string =>
    `the CUDA ${cuda} runtime: package ${pkg} (or all of cuda-libraries-${cuda}-0) from ${CUDA_REPO}, or an nvidia/cuda:${cuda}.x-cudnn-runtime image`;
  if (soname === CUDA_DRIVER_LIBRARY)
    return `the NVIDIA driver (580 or newer for CUDA 13); in a container, run it with the NVIDIA container toolkit (Kubernetes: the GPU operator), which mounts the driver's ${CUDA_DRIVER_LIBRARY}`;
  if (soname.startsWith("libcudart.so.")) return runtime(`cuda-cudart-${cuda}-0`);
  if (soname.startsWith("libcublasLt.so.") || soname.startsWith("libcublas.so.")) return runtime(`libcublas-${cuda}-0`);
  if (soname.startsWith("libcurand.so.")) return runtime(`libcurand-${cuda}-0`);
  if (soname.startsWith("libcudnn"))
    return `cuDNN ${major ?? "9"} for CUDA ${cuda}: package libcudnn${major ?? "9"}-cuda-${cuda} from ${CUDA_REPO}, or an nvidia/cuda:${cuda}.x-cudnn-runtime image`;
  if (soname.startsWith("libnvinfer") || soname.startsWith("libnvonnxparser")) return `TensorRT 10 for CUDA ${cuda}`;
  return "a library the CUDA provider links against";
}

/** Folder holding onnxruntime-node's libonnxruntime.so.1, where it loads providers from. */
export function onnxruntimeBinDir(): string {
  return path.join(onnxruntimeNodeDir(), "bin", "napi-v6", process.platform, process.arch);
}

function onnxruntimeNodeDir(): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve("onnxruntime-node/package.json"));
}

/** The installed onnxruntime-node version. */
export function onnxruntimeNodeVersion(): string {
  return (JSON.parse(readFileSync(path.join(onnxruntimeNodeDir(), "package.json"), "utf8")) as { version: string })
    .version;
}

export interface LibraryStatus {
  name: string;
  /** Who needs it: "libonnxruntime_providers_cuda.so" (DT_NEEDED) or "... (dlopen)". */
  neededBy: string;
  found?: { path: string; via: string };
  hint: string;
}

export interface CudaCheck {
  binDir: string;
  /** Provider files present and missing. */
  files: { name: string; path: string; present: boolean }[];
  /** Problems that are not about host libraries (a broken provider file, another ONNX Runtime version). */
  problems: string[];
  libraries: LibraryStatus[];
  /** Where the loader looks for the provider's libraries. */
  searched: string;
}

export interface CudaCheckOptions {
  binDir?: string;
  loader?: LoaderEnvironment;
  /** Leave out the driver's libcuda.so.1 (a container image build, where the driver is mounted at run time). */
  skipDriver?: boolean;
  /** The onnxruntime-node version the providers must match (default: the installed one). */
  onnxruntimeVersion?: string;
}

/** Everything `--ep cuda` needs, checked without loading anything. */
export function checkCudaProvider(options: CudaCheckOptions = {}): CudaCheck {
  const binDir = options.binDir ?? onnxruntimeBinDir();
  const files = CUDA_PROVIDER_REQUIRED.map((name) => ({
    name,
    path: path.join(binDir, name),
    present: existsSync(path.join(binDir, name)),
  }));
  const check: CudaCheck = { binDir, files, problems: [], libraries: [], searched: "" };
  const markerPath = path.join(binDir, CUDA_PROVIDER_MARKER);
  if (existsSync(markerPath)) {
    const ortVersion = options.onnxruntimeVersion ?? onnxruntimeNodeVersion();
    try {
      const marker = JSON.parse(readFileSync(markerPath, "utf8")) as { onnxruntime?: string };
      if (marker.onnxruntime !== ortVersion) {
        check.problems.push(
          `the CUDA provider in ${binDir} is ONNX Runtime ${marker.onnxruntime}'s, but onnxruntime-node is ${ortVersion}: a provider loads only into its own version; run \`${SETUP_COMMAND}\` again`,
        );
      }
    } catch {
      check.problems.push(`${markerPath} is unreadable: run \`${SETUP_COMMAND}\` again`);
    }
  }
  const provider = files.find((f) => f.name === CUDA_PROVIDER_LIBRARY)!;
  if (!provider.present) return check;
  let object: LoadingObject;
  let needed: string[];
  try {
    const dyn = readElfDynamic(provider.path);
    object = { file: provider.path, rpath: dyn.rpath, runpath: dyn.runpath };
    needed = dyn.needed;
  } catch (err) {
    if (!(err instanceof NotElfError) && statSync(provider.path, { throwIfNoEntry: false })?.isFile() !== true)
      throw err;
    check.problems.push(
      `${provider.path} is not a usable shared library (${(err as Error).message}): run \`${SETUP_COMMAND}\` again`,
    );
    return check;
  }
  const loader = options.loader ?? currentLoaderEnvironment();
  check.searched = describeSearch(object, loader);
  const wanted: [string, string][] = [
    ...needed.filter((n) => !SYSTEM_LIBRARIES.has(n)).map((n): [string, string] => [n, CUDA_PROVIDER_LIBRARY]),
    // A provider that links cuDNN (onnxruntime-node's NuGet build may) lists it once, as DT_NEEDED.
    ...CUDA_PROVIDER_DLOPENED.filter((n) => !needed.includes(n)).map((n): [string, string] => [
      n,
      `${CUDA_PROVIDER_LIBRARY} (dlopen)`,
    ]),
  ];
  const cuda = needed.map((n) => /^libcudart\.so\.(\d+)$/.exec(n)?.[1]).find((m) => m !== undefined) ?? "13";
  for (const [name, neededBy] of wanted) {
    if (options.skipDriver === true && name === CUDA_DRIVER_LIBRARY) continue;
    const status: LibraryStatus = { name, neededBy, hint: libraryHint(name, cuda) };
    const found = resolveLibrary(name, object, loader);
    if (found !== undefined) status.found = found;
    check.libraries.push(status);
  }
  return check;
}

/** The message for an unusable installation, or undefined when `--ep cuda` can start. */
export function cudaCheckFailure(check: CudaCheck): string | undefined {
  const missingFiles = check.files.filter((f) => !f.present);
  if (missingFiles.length > 0) {
    return (
      `execution provider cuda is not installed: ${missingFiles.map((f) => f.path).join(", ")} ${missingFiles.length === 1 ? "is" : "are"} missing. ` +
      `Run \`${SETUP_COMMAND}\` (downloads ONNX Runtime ${CUDA_PROVIDER_PACKAGE.onnxruntime}'s CUDA 13 provider from npm, ${CUDA_PROVIDER_SPEC}, about 180 MB), or use --ep cpu|webgpu`
    );
  }
  if (check.problems.length > 0) return `execution provider cuda cannot start: ${check.problems.join("; ")}`;
  const missing = check.libraries.filter((l) => l.found === undefined);
  if (missing.length === 0) return undefined;
  const lines = missing.map((l) => `${l.name} (needed by ${l.neededBy}): install ${l.hint}`);
  return (
    `execution provider cuda cannot start: ${missing.length === 1 ? "a library it needs is" : `${missing.length} libraries it needs are`} not found: ${missing.map((l) => l.name).join(", ")}.\n` +
    `${lines.map((l) => `  - ${l}`).join("\n")}\n` +
    `Searched: ${check.searched}. If they are installed elsewhere, add that folder to LD_LIBRARY_PATH (or to /etc/ld.so.conf.d and run ldconfig). ` +
    `\`npx framefarm setup cuda --check\` lists every library and where it is found`
  );
}

/** Throws FAILED_PRECONDITION naming what is missing and how to get it. */
export function assertCudaProviderUsable(options: CudaCheckOptions = {}): void {
  const failure = cudaCheckFailure(checkCudaProvider(options));
  if (failure !== undefined) throw new FarmError("FAILED_PRECONDITION", failure);
}
