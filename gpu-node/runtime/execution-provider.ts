/**
 * Execution provider choice. onnxruntime-node bundles cpu and webgpu; cuda needs its provider
 * libraries installed at npm-install time (--onnxruntime-node-install=cuda12), so we check for
 * them up front and say how to get them instead of failing inside session creation.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import path from "node:path";
import { listSupportedBackends } from "onnxruntime-node";
import { FarmError } from "../../shared/errors.js";

export type ExecutionProvider = "cpu" | "webgpu" | "cuda";
export const EXECUTION_PROVIDERS: readonly ExecutionProvider[] = ["cpu", "webgpu", "cuda"];

export function parseExecutionProvider(value: string): ExecutionProvider {
  if ((EXECUTION_PROVIDERS as readonly string[]).includes(value)) return value as ExecutionProvider;
  throw new FarmError("INVALID_ARGUMENT", `unknown execution provider ${JSON.stringify(value)}: use one of ${EXECUTION_PROVIDERS.join(", ")}`);
}

function cudaProviderInstalled(): boolean {
  const require = createRequire(import.meta.url);
  const pkgDir = path.dirname(require.resolve("onnxruntime-node/package.json"));
  const binDir = path.join(pkgDir, "bin", "napi-v6", process.platform, process.arch);
  return existsSync(path.join(binDir, "libonnxruntime_providers_cuda.so"));
}

/** Throws FAILED_PRECONDITION when the provider cannot run in this installation. */
export function assertExecutionProviderAvailable(ep: ExecutionProvider): void {
  const backend = listSupportedBackends().find((b) => b.name === ep);
  if (backend === undefined) {
    throw new FarmError("FAILED_PRECONDITION", `execution provider ${ep} is not supported by onnxruntime-node on ${process.platform}/${process.arch}`);
  }
  if (ep === "cuda" && !cudaProviderInstalled()) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      "execution provider cuda is not installed: reinstall with `npm install --onnxruntime-node-install=cuda12` (needs CUDA 12 and cuDNN 9 on the host), or use --ep cpu|webgpu",
    );
  }
}
