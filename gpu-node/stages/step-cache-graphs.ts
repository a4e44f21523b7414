/**
 * The graphs both step caches run once they have decided a call (framefarm_export.step_cache_graphs):
 * computed, transformer_residual runs the whole transformer and gives the blocks' residual too,
 * which stays where the session ran (a KeptTensor: never converted, copied in JavaScript or posted
 * to the node's thread); skipped, transformer_skip adds that residual to the hidden states before
 * block 0 and runs only norm_out and proj_out. On CUDA the model runtime runs both sessions on one
 * worker thread (model-runtime.ts), so the residual goes from one to the other there.
 */
import type { Feed, KeptTensor } from "../runtime/onnx-model.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { StepCacheCall } from "./step-cache.js";
import { STEADY_TRANSFORMER_FEEDS } from "./transformer-feeds.js";

export class StepCacheGraphs {
  private residual: KeptTensor | undefined;
  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  readonly computed: number[] = [];

  constructor(private readonly runtime: Pick<ModelRuntime, "model">) {}

  /**
   * One call: the blocks skipped (when a residual is kept: call 0 always computes) or run. A
   * computed call keeps its residual only when `residualWanted` (a later call may skip): otherwise
   * the residual is not fetched at all, which on a GPU spares copying it to the host.
   */
  async call(feeds: Record<string, Feed>, skip: boolean, residualWanted: boolean): Promise<StepCacheCall> {
    if (skip && this.residual !== undefined) {
      const model = await this.runtime.model("transformer_skip");
      const { outputs } = await model.runTimed({ ...feeds, residual: this.residual }, STEADY_TRANSFORMER_FEEDS);
      this.computed.push(0);
      return { noisePred: outputs["noise_pred"]!, computed: false };
    }
    const model = await this.runtime.model("transformer_residual");
    const { outputs, kept } = await model.runTimed(
      feeds,
      STEADY_TRANSFORMER_FEEDS,
      residualWanted ? { keep: ["residual"] } : { unused: ["residual"] },
    );
    this.residual?.release();
    this.residual = kept["residual"];
    this.computed.push(1);
    return { noisePred: outputs["noise_pred"]!, computed: true };
  }

  /** Frees the kept residual (a section's last call is done). */
  release(): void {
    this.residual?.release();
    this.residual = undefined;
  }
}
