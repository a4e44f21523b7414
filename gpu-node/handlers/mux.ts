/**
 * mux: every section's decoded video joined in plan order (after the input video's frames, when the
 * job extends one), encoded in the job's format (MP4 or WebM) carrying the job's recipe in its
 * comment tag and, when the job asks for them, every frame as a PNG (one tar). Each object is
 * written only if absent, so a retried mux leaves committed ones as they are.
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import { renderParamsOf, type JobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { framesToPngTar } from "../../shared/video/frames-archive.js";
import { yieldToEventLoop } from "../../shared/event-loop.js";
import { decodeSection, finishedFrames, type FrameStream } from "../stages/section-step.js";
import { StreamedSection } from "../stages/streamed-section.js";
import { videoFramesAtSize } from "../stages/encode-video.js";
import {
  need,
  readTensors,
  timed,
  writeVideoObject,
  type StageHandler,
  type TaskObserver,
  type WorkerContext,
} from "./task-io.js";

/**
 * The mux task's frames in video order, made as they are consumed (finishedFrames), and the end of
 * the decode it runs itself: the last section generated comes as latents (`latents<k>`, the plan
 * gives it no decode task), decoded here while the frames already final are encoded.
 */
export async function muxFrames(
  ctx: WorkerContext,
  task: StageTask,
  spec: JobSpec,
  observer: TaskObserver = {},
): Promise<{ stream: FrameStream; decoded: Promise<void> }> {
  const manifest = ctx.runtime.bundle.manifest;
  const params = renderParamsOf(spec);
  const plan = sectionPlanFor(params, manifest);
  // The decode first: it is the long part, and it runs while the other sections are read.
  const streamed = new Map<number, StreamedSection>();
  const decodes: Promise<void>[] = [];
  for (const s of plan.sections) {
    const key = task.inputs[`latents${s.index}`];
    if (key === undefined) continue;
    const read = await timed(observer, "read", () => readTensors(ctx, key));
    const latents = need(read.tensors, "decode_latents", key);
    const [b, , t, h, w] = latents.shape as [number, number, number, number, number];
    const ratio = manifest.vae.spatial_compression_ratio;
    const section = new StreamedSection([
      b,
      3,
      (t - 1) * manifest.vae.temporal_compression_ratio + 1,
      h * ratio,
      w * ratio,
    ]);
    streamed.set(s.index, section);
    const stats = { runMs: 0 };
    decodes.push(
      timed(observer, "vae", () =>
        decodeSection(ctx.runtime, plan, s, latents, params, {
          stats,
          onFrames: section.onFrames,
          into: section.video,
        }),
      ).then(
        () => {
          section.finish();
          observer.onPhase?.("vae_run", stats.runMs);
        },
        (err: unknown) => {
          section.fail(err as Error);
          throw err;
        },
      ),
    );
  }
  const decoded = Promise.all(decodes).then(() => undefined);
  decoded.catch(() => undefined); // the frames fail with it; the handler awaits it after them
  const sections: F32[] = [];
  for (const s of plan.sections) {
    const own = streamed.get(s.index);
    if (own !== undefined) {
      sections.push(own.video);
      continue;
    }
    const key = task.inputs[`section${s.index}`]!;
    const read = await timed(observer, "read", () => readTensors(ctx, key));
    sections.push(need(read.tensors, "video", key));
  }
  const videoKey = task.inputs["video"];
  // The input video's frames are decoded (and resized) as the encoder takes them.
  const input =
    videoKey === undefined || params.video === null
      ? undefined
      : videoFramesAtSize(await ctx.store.get(videoKey), params.video, spec);
  const ready = streamed.size === 0 ? undefined : (i: number, frames: number) => streamed.get(i)?.ready(frames);
  const stream = finishedFrames(plan, params, manifest.vae.temporal_compression_ratio, sections, input, ready);
  return { stream, decoded };
}

/** Every frame of the mux task's video in one uint8 [T, H, W, 3] tensor (the PNG archive). */
export async function assembleFrames(
  ctx: WorkerContext,
  task: StageTask,
  spec: JobSpec,
  observer: TaskObserver = {},
): Promise<Tensor<"uint8">> {
  const { stream, decoded } = await muxFrames(ctx, task, spec, observer);
  const { width, height, count, frames } = stream;
  const all = await timed(observer, "blend", async () => {
    const frameBytes = width * height * 3;
    const out = new Uint8Array(count * frameBytes);
    let i = 0;
    for await (const frame of frames) {
      out.set(frame, i++ * frameBytes);
      if (i % 4 === 0) await yieldToEventLoop();
    }
    return new Tensor("uint8", [count, height, width, 3], out);
  });
  await decoded;
  return all;
}

/** frames, adding the time spent making each one to `spent`. */
function timedFrames(frames: FrameStream["frames"], spent: { ms: number }): FrameStream["frames"] {
  if (Symbol.asyncIterator in frames)
    return {
      async *[Symbol.asyncIterator]() {
        const it = frames[Symbol.asyncIterator]();
        for (;;) {
          const started = performance.now();
          const next = await it.next();
          spent.ms += performance.now() - started;
          if (next.done === true) return;
          yield next.value;
        }
      },
    };
  return {
    *[Symbol.iterator]() {
      const it = frames[Symbol.iterator]();
      for (;;) {
        const started = performance.now();
        const next = it.next();
        spent.ms += performance.now() - started;
        if (next.done === true) return;
        yield next.value;
      }
    },
  };
}

export const muxHandler: StageHandler = async (ctx, task, spec, observer) => {
  // The recipe (JSON), stored at submission, when the coordinator knew its bundle's digest.
  const recipeKey = task.inputs["recipe"];
  const comment = recipeKey !== undefined ? new TextDecoder().decode(await ctx.store.get(recipeKey)) : undefined;
  const { fps, crf, lossless } = spec.params;
  const options = {
    fps,
    crf,
    lossless,
    format: spec.output?.format ?? "mp4",
    ...(comment !== undefined ? { comment } : {}),
  } as const;
  const framesKey = task.outputs["frames"];
  if (framesKey !== undefined) {
    // The PNG archive needs every frame at once; the video is encoded from the same tensor.
    const frames = await assembleFrames(ctx, task, spec, observer);
    if ((await ctx.store.head(framesKey)) === null)
      await timed(observer, "frames", async () =>
        ctx.store.putIfAbsent(framesKey, await framesToPngTar(frames), "application/x-tar"),
      );
    await timed(observer, "encode", () => writeVideoObject(ctx.store, task.outputs["video"]!, frames, options));
    return;
  }
  // Blending and conversion run while ffmpeg encodes the frames made before; "blend" is the time
  // spent making frames, "encode" the whole stream's.
  // With the last section decoded here, "blend" also holds the waits for its frames.
  const { stream, decoded } = await muxFrames(ctx, task, spec, observer);
  const blend = { ms: 0 };
  await timed(observer, "encode", () =>
    writeVideoObject(
      ctx.store,
      task.outputs["video"]!,
      { width: stream.width, height: stream.height, frames: timedFrames(stream.frames, blend) },
      options,
    ),
  );
  await decoded;
  observer.onPhase?.("blend", blend.ms);
};
