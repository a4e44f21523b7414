/**
 * Builds the finished video section by section without holding it all in float32. Soft-append
 * only ever changes the `overlap` frames at the growing edge (the tail in vanilla sampling, the
 * head in inverted sampling), so only those stay float; every other frame is final and is kept as
 * uint8 RGB. Each section's frames go straight from the decoded planes (blended where they
 * overlap) to the open edge or to uint8, never through a whole soft-appended copy. The result
 * equals soft-appending the whole float video and converting at the end.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { SamplingType } from "../bundle/manifest.js";
import { blendPlane, fadeWeights } from "./soft-append.js";
import { diffusersPlaneToUint8, type PlaneConverter } from "./frames.js";
import { yieldToEventLoop } from "../event-loop.js";

export class VideoAccumulator {
  /** Frames that a later section may still blend into. */
  private open: F32 | null = null;
  /** Final frames in video order: vanilla appends, inverted prepends. */
  private readonly chunks: Tensor<"uint8">[] = [];

  constructor(
    private readonly samplingType: SamplingType,
    private readonly overlap: number,
    private readonly toUint8: PlaneConverter = diffusersPlaneToUint8,
  ) {}

  /** Adds one decoded section [1, 3, T, H, W] in [-1, 1]. */
  add(current: F32): void {
    for (const _ of this.addPlanes(current));
  }

  /** add(), yielding to the event loop every few planes (a node's mux beside other jobs' steps). */
  async addAsync(current: F32): Promise<void> {
    let planes = 0;
    for (const _ of this.addPlanes(current)) if (++planes % 4 === 0) await yieldToEventLoop();
  }

  /** add()'s work, one frame plane at a time. */
  private *addPlanes(current: F32): Generator<void> {
    if (current.shape.length !== 5 || current.shape[0] !== 1 || current.shape[1] !== 3)
      throw new RangeError(`expected a [1, 3, T, H, W] video, got ${current.describe()}`);
    const inverted = this.samplingType === "inverted_anti_drifting";
    // softAppend(history, current): the earlier clip in time first.
    const joined = this.open === null ? null : inverted ? [current, this.open] : [this.open, current];
    const [h, w] = [current.shape[3]!, current.shape[4]!];
    const size = h * w;
    let frames: number;
    let plane: (ch: number, i: number) => Float32Array;
    if (joined === null) {
      frames = current.shape[2]!;
      plane = (ch, i) => current.data.subarray((ch * frames + i) * size, (ch * frames + i + 1) * size);
    } else {
      const [first, second] = joined as [F32, F32];
      if (second.shape[3] !== h || second.shape[4] !== w || first.shape[3] !== h || first.shape[4] !== w)
        throw new RangeError(`soft append: ${first.describe()} and ${second.describe()} differ outside the time axis`);
      const t1 = first.shape[2]!;
      const t2 = second.shape[2]!;
      const overlap = Math.max(0, this.overlap);
      if (t1 < overlap || t2 < overlap)
        throw new RangeError(`soft append needs ${overlap} frames on both sides, got ${t1} and ${t2}`);
      frames = t1 + t2 - overlap;
      const weights = fadeWeights(overlap);
      const scratch = new Float32Array(size);
      const of = (t: F32, frameCount: number, ch: number, i: number): Float32Array =>
        t.data.subarray((ch * frameCount + i) * size, (ch * frameCount + i + 1) * size);
      plane = (ch, i) => {
        if (i < t1 - overlap) return of(first, t1, ch, i);
        if (i >= t1) return of(second, t2, ch, i - t1 + overlap);
        const k = i - (t1 - overlap);
        blendPlane(scratch, of(first, t1, ch, i), of(second, t2, ch, k), weights[k]!);
        return scratch;
      };
    }
    const keep = Math.min(this.overlap, frames);
    // The open edge: the head (inverted) or the tail (vanilla); the rest is final.
    const openFrom = inverted ? 0 : frames - keep;
    const finalFrom = inverted ? keep : 0;
    const finalCount = frames - keep;
    const open = new Float32Array(3 * keep * size);
    const final = new Uint8Array(finalCount * size * 3);
    for (let ch = 0; ch < 3; ch++) {
      for (let j = 0; j < keep; j++) open.set(plane(ch, openFrom + j), (ch * keep + j) * size);
      for (let j = 0; j < finalCount; j++) {
        this.toUint8(plane(ch, finalFrom + j), final, j * size * 3 + ch);
        yield;
      }
    }
    this.open = new Tensor("float32", [1, 3, keep, h, w], open);
    if (finalCount > 0) {
      const chunk = new Tensor("uint8", [finalCount, h, w, 3], final);
      if (inverted) this.chunks.unshift(chunk);
      else this.chunks.push(chunk);
    }
  }

  /** All frames as uint8 [T, H, W, 3], the first `limit` of them. */
  finish(limit = Infinity): Tensor<"uint8"> {
    const all = [...this.chunks];
    if (this.open !== null) {
      const [, , t, h, w] = this.open.shape as [number, number, number, number, number];
      const size = h * w;
      const last = new Uint8Array(t * size * 3);
      for (let ch = 0; ch < 3; ch++)
        for (let i = 0; i < t; i++)
          this.toUint8(this.open.data.subarray((ch * t + i) * size, (ch * t + i + 1) * size), last, i * size * 3 + ch);
      const tensor = new Tensor("uint8", [t, h, w, 3], last);
      if (this.samplingType === "inverted_anti_drifting") all.unshift(tensor);
      else all.push(tensor);
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
