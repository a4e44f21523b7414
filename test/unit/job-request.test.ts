/** The CLI's sampler and prompt-schedule options become the API's settings. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import { RENDER_OPTIONS, renderSettingsFrom } from "../../coordinator/cli/job-request.js";
import { renderVaeTiling } from "../../coordinator/cli/render.js";
import { Sampler, UnipcVariant } from "../../proto/gen/framefarm/v1/jobs.js";
import { FarmError } from "../../shared/errors.js";

const parse = (args: string[]) =>
  parseArgs({ args, options: RENDER_OPTIONS, strict: true, allowPositionals: false }).values;

test("--sampler, --unipc-variant, --cfg-rescale, --section-prompt (repeated), --prompt-blend", () => {
  const s = renderSettingsFrom(
    parse([
      "--frames",
      "60",
      "--sampler",
      "unipc",
      "--unipc-variant",
      "bh2",
      "--cfg-rescale",
      "0.7",
      "--section-prompt",
      "a",
      "--section-prompt",
      "b",
      "--prompt-blend",
      "1",
    ]),
  );
  assert.equal(s.sampler, Sampler.SAMPLER_UNIPC);
  assert.deepEqual(s.unipc, { variant: UnipcVariant.UNIPC_VARIANT_BH2, cfgRescale: 0.7 });
  assert.deepEqual(s.promptSchedule, { sectionPrompts: ["a", "b"], blendSections: 1 });
  assert.equal(s.prompt, "");
  const plain = renderSettingsFrom(parse(["--prompt", "[0s: a] [1s: b]", "--sampler", "euler"]));
  assert.equal(plain.sampler, Sampler.SAMPLER_FLOW_MATCH_EULER);
  assert.equal(plain.promptSchedule, undefined);
  assert.equal(plain.unipc, undefined);
  const bad = (args: string[], re: RegExp) =>
    assert.throws(
      () => renderSettingsFrom(parse(args)),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && re.test(e.message),
    );
  bad(["--sampler", "ddim"], /sampler must be euler \(.*\) or unipc \(.*\), got "ddim"/);
  bad(["--unipc-variant", "bh9"], /UniPC variant must be bh1 or bh2, got "bh9"/);
});

test("--vae-tiling sets the job's VAE tiling; absent, the setting is left to the farm's default (off)", () => {
  assert.equal(renderSettingsFrom(parse(["--vae-tiling"])).vaeTiling, true);
  assert.equal(renderSettingsFrom(parse([])).vaeTiling, undefined);
});

test("render's --vae-tiling defaults to FRAMEFARM_VAE_TILING=1; a recipe decides itself", () => {
  const on = { FRAMEFARM_VAE_TILING: "1" };
  assert.equal(renderVaeTiling({}, {}), undefined);
  assert.equal(renderVaeTiling({}, { FRAMEFARM_VAE_TILING: "0" }), undefined);
  assert.equal(renderVaeTiling({}, on), true);
  assert.equal(renderVaeTiling({ "vae-tiling": true }, {}), true);
  // With --recipe the recipe's vae_tiling renders; the environment must not add a flag the recipe forbids.
  assert.equal(renderVaeTiling({ recipe: "out.mp4" }, on), undefined);
  assert.throws(
    () => renderVaeTiling({}, { FRAMEFARM_VAE_TILING: "on" }),
    (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /FRAMEFARM_VAE_TILING/.test(e.message),
  );
});
