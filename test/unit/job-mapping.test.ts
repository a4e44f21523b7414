/** The sampler and prompt-schedule fields through the one proto mapping, both ways. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { renderParamsInputOf, settingsOf } from "../../coordinator/api/job-mapping.js";
import type { JobRecord } from "../../coordinator/dispatch/job-record.js";
import { Sampler, UnipcVariant, type RenderSettings } from "../../proto/gen/framefarm/v1/jobs.js";
import { renderParamsOf, toJobSpec } from "../../shared/job/job-spec.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { FarmError } from "../../shared/errors.js";

const defaults = { samplingType: "vanilla", latentWindowSize: 3 } as const;
const base: RenderSettings = { prompt: "", length: { $case: "numFrames", value: 72 }, mode: 0, height: 64, width: 64 };

const roundTrip = (s: RenderSettings): RenderSettings => {
  const params = validateRenderParams(renderParamsInputOf(s, false), defaults);
  const record = { spec: toJobSpec("job1", params, { height: 64, width: 64 }) } as JobRecord;
  return settingsOf(record);
};

test("unipc options and section prompts survive submission and come back in GetJob's settings", () => {
  const back = roundTrip({
    ...base,
    sampler: Sampler.SAMPLER_UNIPC,
    unipc: { variant: UnipcVariant.UNIPC_VARIANT_BH2, cfgRescale: 0.25 },
    promptSchedule: { sectionPrompts: ["a", "b", "c", "d", "e", "f"], blendSections: 1 },
  });
  assert.equal(back.sampler, Sampler.SAMPLER_UNIPC);
  assert.deepEqual(back.unipc, { variant: UnipcVariant.UNIPC_VARIANT_BH2, cfgRescale: 0.25 });
  assert.deepEqual(back.promptSchedule, { sectionPrompts: ["a", "b", "c", "d", "e", "f"], blendSections: 1 });
});

test("a plain job's settings name FlowMatch Euler and carry no unipc options or prompt schedule", () => {
  const back = roundTrip({ ...base, prompt: "a lighthouse" });
  assert.equal(back.sampler, Sampler.SAMPLER_FLOW_MATCH_EULER);
  assert.equal(back.unipc, undefined);
  assert.equal(back.promptSchedule, undefined);
  const timed = roundTrip({
    ...base,
    prompt: "[0s: a] [1s: b]",
    promptSchedule: { sectionPrompts: [], blendSections: 2 },
  });
  assert.deepEqual(timed.promptSchedule, { sectionPrompts: [], blendSections: 2 });
});

test("unknown enum numbers are refused by the mapping, naming the field", () => {
  const refused = (s: Partial<RenderSettings>, re: RegExp) =>
    assert.throws(
      () => renderParamsInputOf({ ...base, ...s }, false),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && re.test(e.message),
    );
  refused({ sampler: 7 as Sampler }, /sampler 7 is not a Sampler/);
  refused({ unipc: { variant: 9 as UnipcVariant } }, /unipc.variant 9 is not a UnipcVariant/);
});

test("VAE tiling travels from the request to the job and back in GetJob's settings; old records read untiled", () => {
  assert.equal(roundTrip({ ...base, prompt: "a", vaeTiling: true }).vaeTiling, true);
  assert.equal(roundTrip({ ...base, prompt: "a", vaeTiling: false }).vaeTiling, false);
  assert.equal(roundTrip({ ...base, prompt: "a" }).vaeTiling, false);
  const params = validateRenderParams(renderParamsInputOf({ ...base, prompt: "a" }, false), defaults);
  const spec = toJobSpec("job1", params, { height: 64, width: 64 });
  const { vaeTiling: _dropped, ...older } = spec.params;
  assert.equal(settingsOf({ spec: { ...spec, params: older } } as unknown as JobRecord).vaeTiling, false);
  assert.equal(renderParamsOf({ ...spec, params: older } as typeof spec).vaeTiling, false);
});
