/**
 * Where a job's objects live in the object store. Every key derives from the job's id (a random
 * UUID), never from user text; the planner names a task's inputs and outputs with these.
 */

/** Every object a job writes lives under this prefix. */
export const jobPrefix = (jobId: string): string => `jobs/${jobId}/`;

/**
 * What a job writes only for its own later tasks (embeddings, histories, decoded sections): removed
 * once it has succeeded. Inputs, previews and the video stay. At real sizes a section's decoded
 * frames alone are hundreds of MB.
 */
export const intermediatePrefixes = (jobId: string): string[] =>
  ["text/", "image/", "sections/"].map((p) => `${jobPrefix(jobId)}${p}`);

export function jobKeys(jobId: string) {
  const p = jobPrefix(jobId);
  return {
    firstImage: `${p}inputs/first-image`,
    lastImage: `${p}inputs/last-image`,
    /** The video a job extends (--video), as uploaded. */
    inputVideo: `${p}inputs/video`,
    /** The i-th keyframe's image (0-based, in time order). */
    keyframeImage: (i: number) => `${p}inputs/keyframe-${i}`,
    promptEmbeds: `${p}text/prompt.safetensors`,
    negativeEmbeds: `${p}text/negative.safetensors`,
    imageEmbeds: `${p}image/embeds.safetensors`,
    imageLatents: `${p}image/latents.safetensors`,
    history: (k: number) => `${p}sections/${k}/history.safetensors`,
    sectionVideo: (k: number) => `${p}sections/${k}/video.safetensors`,
    /** A section's decoded frames as a small MP4, for watching a job while it renders. */
    sectionPreview: (k: number) => `${p}previews/section-${k}.mp4`,
    video: `${p}output/video.mp4`,
    webm: `${p}output/video.webm`,
    /** Every frame as PNG, in one tar (frame_00000.png, ...). */
    frames: `${p}output/frames.tar`,
    /** The job's recipe (JSON), stored at submission; the mux embeds it in the video. */
    recipe: `${p}output/recipe.json`,
  };
}
