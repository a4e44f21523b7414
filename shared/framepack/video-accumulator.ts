/**
 * Builds the finished video section by section without holding it all in float32. Soft-append
 * only ever changes the `overlap` frames at the growing edge (the tail in vanilla sampling, the
 * head in inverted sampling), so only those stay float; every other frame is final and is kept as
 * uint8 RGB. The result equals soft-appending the whole float video and converting at the end.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { narrow } from "../tensor/ops.js";
import type { SamplingType } from "../bundle/manifest.js";
import { softAppend } from "./soft-append.js";
import { videoToUint8Frames, type FrameConverter } from "./frames.js";

export class VideoAccumulator {
  /** Frames that a later section may still blend into. */
  private open: F32 | null = null;
  /** Final frames in video order: vanilla appends, inverted prepends. */
  private readonly chunks: Tensor<"uint8">[] = [];

  constructor(
    private readonly samplingType: SamplingType,
    private readonly overlap: number,
    private readonly toUint8: FrameConverter = videoToUint8Frames,
  ) {}

  /** Adds one decoded section [1, 3, T, H, W] in [-1, 1]. */
  add(current: F32): void {
    let video: F32;
    if (this.open === null) video = current;
    else if (this.samplingType === "inverted_anti_drifting") video = softAppend(current, this.open, this.overlap);
    else video = softAppend(this.open, current, this.overlap);
    const frames = video.shape[2]!;
    const keep = Math.min(this.overlap, frames);
    if (this.samplingType === "inverted_anti_drifting") {
      this.open = narrow(video, 2, 0, keep);
      if (frames > keep) this.chunks.unshift(this.toUint8(narrow(video, 2, keep, frames - keep), frames - keep));
    } else {
      this.open = narrow(video, 2, frames - keep, keep);
      if (frames > keep) this.chunks.push(this.toUint8(narrow(video, 2, 0, frames - keep), frames - keep));
    }
  }

  /** All frames as uint8 [T, H, W, 3], the first `limit` of them. */
  finish(limit = Infinity): Tensor<"uint8"> {
    const all = [...this.chunks];
    if (this.open !== null) {
      const last = this.toUint8(this.open, this.open.shape[2]!);
      if (this.samplingType === "inverted_anti_drifting") all.unshift(last);
      else all.push(last);
    }
    const first = all[0];
    if (first === undefined) throw new RangeError("no sections were added");
    const [, h, w, c] = first.shape as [number, number, number, number];
    const total = Math.min(
      limit,
      all.reduce((n, t) => n + t.shape[0]!, 0),
    );
    const out = new Uint8Array(total * h * w * c);
    let at = 0;
    for (const t of all) {
      const n = Math.min(t.data.length, out.length - at);
      out.set(t.data.subarray(0, n), at);
      at += n;
    }
    return new Tensor("uint8", [total, h, w, c], out);
  }
}
