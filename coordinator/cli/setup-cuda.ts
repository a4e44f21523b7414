/**
 * `framefarm setup cuda`: installs ONNX Runtime's CUDA provider from npm where onnxruntime-node
 * loads it (gpu-node/runtime/cuda-setup.ts), then lists the host libraries it needs and where the
 * loader finds them; `--check` only lists (exit 1 when something is missing).
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { FarmError } from "../../shared/errors.js";
import {
  CUDA_PROVIDER_SPEC,
  checkCudaProvider,
  cudaCheckFailure,
  type CudaCheck,
} from "../../gpu-node/runtime/cuda-provider.js";
import { setupCudaProvider } from "../../gpu-node/runtime/cuda-setup.js";
import { packageRoot } from "./defaults.js";

const HELP = `framefarm setup cuda — install ONNX Runtime's CUDA execution provider (for --ep cuda)

Downloads ${CUDA_PROVIDER_SPEC} (ONNX Runtime 1.29.0's CUDA 13 provider, about 180 MB) with
npm pack, checks it against the pinned integrity and puts its provider libraries beside
onnxruntime-node's libonnxruntime.so.1. The host needs the CUDA 13 runtime, cuBLAS, cuRAND,
cuDNN 9 and the NVIDIA driver; the command lists them and where they are found.

  --from FILE        use this tarball of ${CUDA_PROVIDER_SPEC} (no npm access needed)
  --cache-dir DIR    where the downloaded tarball is kept for offline re-runs (.cache/cuda)
  --check            install nothing: list the provider files and every library they need,
                     where each is found; exit 1 if anything is missing
  --skip-driver      leave out the driver's libcuda.so.1 (an image build, where the NVIDIA
                     container toolkit mounts it only at run time)`;

export async function setupCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      from: { type: "string" },
      "cache-dir": { type: "string" },
      check: { type: "boolean" },
      "skip-driver": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help === true) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] !== "cuda") {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `usage: framefarm setup cuda [--from FILE] [--cache-dir DIR] [--check [--skip-driver]] (got ${JSON.stringify(positionals.join(" "))})`,
    );
  }
  const log = (line: string): void => void process.stdout.write(`${line}\n`);
  const skipDriver = values["skip-driver"] === true;
  if (values.check !== true) {
    await setupCudaProvider({
      cacheDir: path.resolve(values["cache-dir"] ?? path.join(packageRoot(), ".cache", "cuda")),
      ...(values.from === undefined ? {} : { from: values.from }),
      log,
    });
  }
  const check = checkCudaProvider({ skipDriver });
  printCheck(check, log);
  const failure = cudaCheckFailure(check);
  if (failure === undefined) {
    log("ok: --ep cuda can start (the check finds files; it does not load them or touch a GPU)");
    return 0;
  }
  if (values.check === true) throw new FarmError("FAILED_PRECONDITION", failure);
  // The provider is installed; what is missing belongs to the host, needed only at run time.
  const missing = check.libraries.filter((l) => l.found === undefined).map((l) => l.name);
  log(
    missing.length > 0 && check.problems.length === 0
      ? `installed; --ep cuda also needs ${missing.join(", ")} on the host that runs it (see MISSING above; \`framefarm setup cuda --check\` checks again)`
      : `installed, but: ${failure}`,
  );
  return 0;
}

export function printCheck(check: CudaCheck, log: (line: string) => void): void {
  log(`provider files in ${check.binDir}:`);
  for (const f of check.files) log(`  ${f.present ? "ok     " : "MISSING"} ${f.name}`);
  for (const p of check.problems) log(`  problem: ${p}`);
  if (check.libraries.length === 0) return;
  log(
    "libraries the provider needs (found as the dynamic loader would: RPATH, LD_LIBRARY_PATH, RUNPATH, ldconfig cache, default directories):",
  );
  const width = Math.max(...check.libraries.map((l) => l.name.length));
  for (const l of check.libraries) {
    const where = l.found === undefined ? `MISSING: install ${l.hint}` : `${l.found.path} (${l.found.via})`;
    log(`  ${l.name.padEnd(width)}  ${where}${l.neededBy.endsWith("(dlopen)") ? "  [loaded with dlopen]" : ""}`);
  }
}
