/**
 * Where a finished job's results are: the video (MP4 or WebM), its recipe and the frames' PNGs,
 * read from the job's mux task, which names them (jobs planned before formats: an MP4 alone).
 */
import { jobKeys } from "../../shared/farm/keys.js";
import type { StageTask } from "../../shared/farm/protocol.js";

export interface JobOutputKeys {
  video: string;
  /** Absent for jobs planned without one (by a coordinator that did not know its bundle's digest). */
  recipe?: string;
  /** Only when the job was asked to save its frames. */
  frames?: string;
}

export function jobOutputKeys(jobId: string, tasks: readonly StageTask[]): JobOutputKeys {
  const mux = tasks.find((t) => t.kind === "mux");
  const recipe = mux?.inputs["recipe"];
  const frames = mux?.outputs["frames"];
  return {
    video: mux?.outputs["video"] ?? jobKeys(jobId).video,
    ...(recipe !== undefined ? { recipe } : {}),
    ...(frames !== undefined ? { frames } : {}),
  };
}

/** The name a browser saves a job's video under: its id and its format's extension. */
export const videoFileName = (r: { spec: { jobId: string; output?: { format: string } } }): string =>
  `${r.spec.jobId}.${r.spec.output?.format ?? "mp4"}`;
