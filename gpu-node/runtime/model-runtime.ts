/**
 * The ONNX sessions of one bundle on one execution provider. Sessions are created on first use and
 * kept warm: a node that serves only denoise never loads the text encoders.
 */
import { FarmError } from "../../shared/errors.js";
import { COMPONENT_NAMES, type ComponentName } from "../../shared/bundle/manifest.js";
import type { Bundle } from "./bundle.js";
import { assertExecutionProviderAvailable } from "./execution-provider.js";
import { OnnxModel, type ModelClock, type SessionSettings } from "./onnx-model.js";

export class ModelRuntime {
  private readonly sessions = new Map<ComponentName, Promise<OnnxModel>>();
  /** Time spent inside onnxruntime by every session of this runtime. */
  readonly clock: ModelClock = { ms: 0 };

  constructor(
    readonly bundle: Bundle,
    readonly settings: SessionSettings,
  ) {
    assertExecutionProviderAvailable(settings.ep);
  }

  model(name: ComponentName): Promise<OnnxModel> {
    let pending = this.sessions.get(name);
    if (pending === undefined) {
      pending = this.load(name);
      this.sessions.set(name, pending);
      // A failed load must not poison the cache: the next call retries.
      pending.catch(() => this.sessions.delete(name));
    }
    return pending;
  }

  private async load(name: ComponentName): Promise<OnnxModel> {
    const model = await OnnxModel.load(name, this.bundle.componentPath(name), this.settings, this.clock);
    const expected = this.bundle.manifest.components[name].inputs;
    const missing = expected.filter((n) => !model.inputNames.includes(n));
    if (missing.length > 0) {
      await model.release();
      throw new FarmError(
        "FAILED_PRECONDITION",
        `${name} graph lacks inputs ${missing.join(", ")} that the manifest promises: re-export the bundle`,
      );
    }
    return model;
  }

  /** Loads the named components now (a node warms the models of its stages at start). */
  async warm(names: readonly ComponentName[] = COMPONENT_NAMES): Promise<void> {
    await Promise.all(names.map((n) => this.model(n)));
  }

  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => undefined))?.release()));
  }
}
