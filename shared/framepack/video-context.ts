/**
 * Extending a video (--video): which of the input video's frames become latents, and how many of
 * them the sections' context reads, after FramePack-Studio's "Video" and "Video F1" modes (README,
 * "Extending a video"). Pure.
 */

/** Studio's "Number of Context Frames" slider: 2 to 10, 5 by default. */
export const DEFAULT_CONTEXT_FRAMES = 5;
export const MIN_CONTEXT_FRAMES = 2;
export const MAX_CONTEXT_FRAMES = 10;

/**
 * Studio's max_latents_used_for_context: the most latents any context reads (16 at 4x, 2 at 2x
 * and up to 9 at 1x), so at most this many of the video's last latents are encoded.
 */
export const STUDIO_CONTEXT_LATENTS = 27;

/** Latent frames a video of `frames` frames has when its last (T - 1) // tc * tc + 1 frames are encoded. */
export const availableLatentFrames = (frames: number, temporalCompression: number): number =>
  Math.floor((frames - 1) / temporalCompression) + 1;

/**
 * L, the latents encoded: all the video has, at most Studio's 27, or the window if that is longer
 * (the section next to the input decodes the input's last window of latents with its own).
 */
export const videoLatentFrames = (frames: number, window: number, temporalCompression: number): number =>
  Math.min(availableLatentFrames(frames, temporalCompression), Math.max(STUDIO_CONTEXT_LATENTS, window));

/** Pixel frames L latents are encoded from: the video's last (L - 1) * tc + 1. */
export const encodedFrames = (latentFrames: number, temporalCompression: number): number =>
  (latentFrames - 1) * temporalCompression + 1;

/**
 * The fewest latents a video must give: the N context frames, and one window for the section next
 * to the input to decode with its own (the cross-fade at the join).
 */
export const minVideoLatents = (contextFrames: number, window: number): number => Math.max(contextFrames, window);
