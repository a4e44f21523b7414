/**
 * Execution provider choice. onnxruntime-node bundles cpu and webgpu; cuda needs ONNX Runtime's
 * CUDA provider libraries beside libonnxruntime.so.1 (`framefarm setup cuda` puts them there) and
 * the CUDA 13 / cuDNN 9 libraries they load, so we check all of that up front and say how to get
 * what is missing instead of failing inside session creation (cuda-provider.ts).
 */
import { listSupportedBackends } from "onnxruntime-node";
import { FarmError } from "../../shared/errors.js";
import { assertCudaProviderUsable } from "./cuda-provider.js";

export type ExecutionProvider = "cpu" | "webgpu" | "cuda";
export const EXECUTION_PROVIDERS: readonly ExecutionProvider[] = ["cpu", "webgpu", "cuda"];

export function parseExecutionProvider(value: string): ExecutionProvider {
  if ((EXECUTION_PROVIDERS as readonly string[]).includes(value)) return value as ExecutionProvider;
  throw new FarmError(
    "INVALID_ARGUMENT",
    `unknown execution provider ${JSON.stringify(value)}: use one of ${EXECUTION_PROVIDERS.join(", ")}`,
  );
}

/** Throws FAILED_PRECONDITION when the provider cannot run in this installation. */
export function assertExecutionProviderAvailable(ep: ExecutionProvider): void {
  const backend = listSupportedBackends().find((b) => b.name === ep);
  if (backend === undefined) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `execution provider ${ep} is not supported by onnxruntime-node on ${process.platform}/${process.arch}`,
    );
  }
  if (ep === "cuda") assertCudaProviderUsable();
}
