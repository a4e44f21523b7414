/**
 * What a job record shows to its readers, the gRPC API and the dashboard alike: its tenant, its
 * progress (sections done, the live step, an ETA from measured sections) and its latest preview.
 */
import type { Progress } from "../../proto/gen/framefarm/v1/jobs.js";
import type { StepEvent } from "../../shared/farm/protocol.js";
import { DEFAULT_TENANT } from "../auth/tokens.js";
import type { JobRecord } from "./job-record.js";

/** The tenant a record belongs to; records from before tenants belong to DEFAULT_TENANT. */
export const tenantOf = (r: JobRecord): string => r.spec.tenant ?? DEFAULT_TENANT;

/** Sections done, the live step (from the latest step event) and an ETA from measured sections. */
export function progressOf(r: JobRecord, live?: StepEvent): Progress {
  const denoise = r.tasks.filter((t) => t.kind === "denoise");
  const done = denoise.filter((t) => r.taskStates[t.id] === "done").length;
  const spans = (r.taskLog ?? [])
    .filter((e) => e.ok && e.taskId.includes(".denoise."))
    .map((e) => Date.parse(e.finishedAt) - Date.parse(e.startedAt));
  const perSection = spans.length > 0 ? spans.reduce((a, b) => a + b, 0) / spans.length / 1000 : 0;
  const current = live !== undefined && live.section >= done ? live : undefined;
  const remaining = denoise.length - done - (current !== undefined ? current.step / current.steps : 0);
  return {
    sectionsTotal: denoise.length,
    sectionsDone: done,
    currentSection: current?.section ?? Math.min(done, Math.max(0, denoise.length - 1)),
    currentStep: current?.step ?? 0,
    stepsPerSection: r.spec.params.steps,
    etaSeconds: r.state === "SUCCEEDED" ? 0 : Math.max(0, remaining * perSection),
  };
}

/** The preview of the section decoded last (decode results arrive in the task log in order). */
export function latestPreview(r: JobRecord): string | undefined {
  let latest: string | undefined;
  for (const e of r.taskLog ?? []) if (e.ok) latest = previewOf(r, e.taskId) ?? latest;
  if (latest !== undefined || (r.taskLogDropped ?? 0) === 0) return latest;
  // Its decode's entry was dropped from a long log: the decode done last in plan order.
  for (const t of r.tasks) latest = previewOf(r, t.id) ?? latest;
  return latest;
}

/** The preview a finished decode task wrote, if the event is about one. */
export function previewOf(r: JobRecord, taskId: string | undefined): string | undefined {
  const task = taskId === undefined ? undefined : r.tasks.find((t) => t.id === taskId);
  return task?.kind === "decode" && r.taskStates[task.id] === "done" ? task.outputs["preview"] : undefined;
}
