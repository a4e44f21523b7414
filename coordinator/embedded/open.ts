/**
 * Opens what an embedded render needs: the bundle, its ONNX sessions on one execution provider,
 * and the tokenizers.
 */
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { parseExecutionProvider } from "../../gpu-node/runtime/execution-provider.js";
import { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import { loadTextTokenizers } from "../../gpu-node/text/tokenizers.js";
import type { RenderContext } from "../../gpu-node/stages/render-job.js";

export interface Embedded extends RenderContext {
  close(): Promise<void>;
}

export async function openEmbedded(bundleDir: string, ep: string): Promise<Embedded> {
  const provider = parseExecutionProvider(ep);
  const bundle = await openBundle(bundleDir);
  const tokenizers = await loadTextTokenizers(bundle);
  const runtime = new ModelRuntime(bundle, { ep: provider });
  return { runtime, tokenizers, close: () => runtime.close() };
}
