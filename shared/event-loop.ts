/**
 * Long host work on a node (hashing, converting or blending a section's frames) runs in slices with
 * a yield between them: the same event loop feeds the GPU its next denoise step, and a step that
 * waits behind a second of synchronous work leaves the GPU idle for that second.
 */
export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
