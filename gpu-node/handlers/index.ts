/**
 * The stage handlers, one per stage kind: the one file that runs each stage on a node.
 *   encode_text  -> encode-text.ts      encode_image -> encode-image.ts    vae_encode -> vae-encode.ts
 *   denoise      -> denoise.ts          decode       -> decode.ts          mux        -> mux.ts
 */
import type { StageKind, StageTask } from "../../shared/farm/protocol.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { encodeTextHandler } from "./encode-text.js";
import { encodeImageHandler } from "./encode-image.js";
import { vaeEncodeHandler } from "./vae-encode.js";
import { denoiseHandler } from "./denoise.js";
import { decodeHandler } from "./decode.js";
import { muxHandler } from "./mux.js";
import type { StageHandler, TaskObserver, WorkerContext } from "./task-io.js";

export const STAGE_HANDLERS: Record<StageKind, StageHandler> = {
  encode_text: encodeTextHandler,
  encode_image: encodeImageHandler,
  vae_encode: vaeEncodeHandler,
  denoise: denoiseHandler,
  decode: decodeHandler,
  mux: muxHandler,
};

/** Runs one planned stage task with its stage's handler. */
export function runStageTask(
  ctx: WorkerContext,
  task: StageTask,
  spec: JobSpec,
  observer: TaskObserver = {},
): Promise<void> {
  return STAGE_HANDLERS[task.kind](ctx, task, spec, observer);
}
