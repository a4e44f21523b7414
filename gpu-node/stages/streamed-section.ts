/**
 * A section's video while it is being decoded: the whole tensor, filled in order as the decoder
 * reports frames final (DecodeOptions.onFrames; the decode writes into `video` itself when given
 * it as DecodeOptions.into), and a wait for "frames [0, n) are there" that the mux's frame stream
 * uses (FramesReady), so the video's encoder takes a frame as soon as it exists.
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";

export class StreamedSection {
  readonly video: F32;
  private filled = 0;
  private failure: Error | undefined;
  private waiters: { frames: number; resolve: () => void; reject: (e: Error) => void }[] = [];

  /** shape: the decode's [B, C, T, H, W], known from its latents before it starts. */
  constructor(shape: readonly number[]) {
    this.video = new Tensor("float32", [...shape], new Float32Array(shape.reduce((a, b) => a * b, 1)));
  }

  /** The decoder's report: frames [0, upTo) of `decoded` are final. */
  readonly onFrames = (decoded: F32, upTo: number): void => {
    const [bs, c, total, h, w] = this.video.shape as [number, number, number, number, number];
    if (decoded.shape.join() !== this.video.shape.join())
      throw new RangeError(`the decode gave ${decoded.describe()}, expected [${this.video.shape.join(", ")}]`);
    if (upTo <= this.filled) return;
    const frame = h * w;
    for (let bc = 0; bc < bs * c && decoded !== this.video; bc++) {
      const from = (bc * total + this.filled) * frame;
      const to = (bc * total + upTo) * frame;
      this.video.data.set(decoded.data.subarray(from, to), from);
    }
    this.filled = upTo;
    this.waiters = this.waiters.filter((x) => {
      if (x.frames > upTo) return true;
      x.resolve();
      return false;
    });
  };

  /** Resolves once frames [0, frames) are final; undefined when they are already. */
  ready(frames: number): Promise<void> | undefined {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (frames <= this.filled) return undefined;
    return new Promise((resolve, reject) => this.waiters.push({ frames, resolve, reject }));
  }

  /** The decode returned: any frame it did not report is an error, not a wait forever. */
  finish(): void {
    const total = this.video.shape[2]!;
    if (this.filled < total) this.fail(new RangeError(`the decode ended at frame ${this.filled} of ${total}`));
  }

  /** The decode failed: every wait, now and later, fails with it. */
  fail(err: Error): void {
    this.failure = err;
    for (const x of this.waiters.splice(0)) x.reject(err);
  }
}
