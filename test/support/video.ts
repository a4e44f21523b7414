/** The frames of a video object as a farm stored it (decoded with the project's ffmpeg). */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { ObjectStore } from "../../shared/store/object-store.js";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { readMp4Frames } from "../../shared/video/mp4.js";

export async function storedVideoFrames(
  store: ObjectStore,
  key: string,
  width: number,
  height: number,
): Promise<Tensor<"uint8">> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-video-"));
  try {
    const file = path.join(dir, "video.mp4");
    await writeFile(file, await store.get(key));
    return await readMp4Frames(file, width, height);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
