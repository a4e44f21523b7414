/**
 * Spatial VAE tiling against diffusers' own: test/fixtures/vae-tiling/vae-tiling.safetensors holds
 * latents and what AutoencoderKLHunyuanVideo.decode gave for them with vae.enable_tiling(...) on the
 * tiny pipeline's VAE (made by framefarm_export.vae_tiling_golden). The tiny bundle's vae_decoder
 * graph runs through decodeVideo's tiling and is compared as decodes are (relative L2 <= 1e-3).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import type { F32 } from "../../shared/tensor/tensor.js";
import { compareTensor } from "../../coordinator/cli/parity/compare.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { parseExecutionProvider } from "../../gpu-node/runtime/execution-provider.js";
import { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import { decodeVideo, toVaeLatents } from "../../gpu-node/stages/decode-latents.js";
import { decodeSection } from "../../gpu-node/stages/section-step.js";
import type { Section, SectionPlan } from "../../shared/framepack/plan.js";
import { FarmError } from "../../shared/errors.js";
import { refuseNodeVaeTiling, vaeTilingFromEnv } from "../../shared/job/vae-tiling-env.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

const fixture = decodeSafetensors(
  readFileSync(path.join(repoRoot(), "test", "fixtures", "vae-tiling", "vae-tiling.safetensors")),
);
const tensor = (key: string): F32 => {
  const t = fixture.tensors.get(key);
  assert.ok(t !== undefined, `fixture has ${key}`);
  return t as F32;
};

const runtime = (async () =>
  new ModelRuntime(await openBundle(tinyBundleDir()), { ep: parseExecutionProvider("cpu") }))();

const cases = [
  // diffusers' default tiles on 34 x 50 latents: 2 x 3 tiles, the last row and column partial.
  { name: "default", tiling: true as const },
  // 64 px tiles, stride 48 on 5 x 10 x 14 latents: two temporal tiles, each tiled 2 x 3.
  {
    name: "small_temporal",
    tiling: {
      tile_sample_min_height: 64,
      tile_sample_min_width: 64,
      tile_sample_stride_height: 48,
      tile_sample_stride_width: 48,
    },
  },
];

for (const c of cases) {
  test(`spatial VAE tiling (${c.name}) matches diffusers' vae.enable_tiling()`, async (t) => {
    const rt = await runtime;
    const want = tensor(`${c.name}.sample`);
    const got = await decodeVideo(rt, tensor(`${c.name}.latents`), { spatialTiling: c.tiling });
    assert.deepEqual(got.shape, want.shape);
    const r = compareTensor(`${c.name}.out`, got, want, "relL2");
    assert.ok(r.ok, `${c.name}: ${r.measured} (limit ${r.limit})`);
    t.diagnostic(`${c.name}: ${r.measured} against diffusers`);
    // The untiled decode is far from diffusers' tiled one, so the comparison is not vacuous.
    const untiled = await decodeVideo(rt, tensor(`${c.name}.latents`), { spatialTiling: false });
    assert.ok(!compareTensor(`${c.name}.out`, untiled, want, "relL2").ok, "untiled decode differs");
  });
}

test("a section's decode tiles exactly when the job says so, whatever FRAMEFARM_VAE_TILING is", async () => {
  const rt = await runtime;
  // 34 x 50 latents: above one 32-latent tile both ways. decodeSection divides by the scaling factor itself.
  const generation = tensor("default.latents");
  const vaeLatents = toVaeLatents(generation, rt.bundle.manifest.vae.scaling_factor);
  const section = { index: 0 } as Section;
  const plan = { sections: [section] } as unknown as SectionPlan;
  const same = (a: F32, b: F32): boolean =>
    Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(
      Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength),
    );
  const tiled = await decodeVideo(rt, vaeLatents, { spatialTiling: true });
  const untiled = await decodeVideo(rt, vaeLatents, { spatialTiling: false });
  const before = process.env["FRAMEFARM_VAE_TILING"];
  try {
    for (const env of [undefined, "1", "0"]) {
      if (env === undefined) delete process.env["FRAMEFARM_VAE_TILING"];
      else process.env["FRAMEFARM_VAE_TILING"] = env;
      const on = await decodeSection(rt, plan, section, generation, { vaeTiling: true });
      const off = await decodeSection(rt, plan, section, generation, { vaeTiling: false });
      assert.ok(same(on, tiled), `tiled job, env ${env}`);
      assert.ok(same(off, untiled), `untiled job, env ${env}`);
      // Nor does a decode without options read the environment.
      assert.ok(same(await decodeVideo(rt, vaeLatents), untiled), `no options, env ${env}`);
    }
  } finally {
    if (before === undefined) delete process.env["FRAMEFARM_VAE_TILING"];
    else process.env["FRAMEFARM_VAE_TILING"] = before;
  }
  assert.ok(!same(tiled, untiled), "tiling changes the frames");
});

test("FRAMEFARM_VAE_TILING as render's --vae-tiling default: unset or 0 is off, 1 is on, anything else is refused", () => {
  assert.equal(vaeTilingFromEnv({}), false);
  assert.equal(vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "0" }), false);
  assert.equal(vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "1" }), true);
  assert.throws(
    () => vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "yes" }),
    (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /must be 0 or 1/.test(e.message),
  );
});

test("a farm node refuses to start with FRAMEFARM_VAE_TILING set (any value), naming the job option", () => {
  refuseNodeVaeTiling({});
  refuseNodeVaeTiling({ FRAMEFARM_VAE_TILING: "" });
  for (const v of ["1", "0"])
    assert.throws(
      () => refuseNodeVaeTiling({ FRAMEFARM_VAE_TILING: v }),
      (e: unknown) =>
        e instanceof FarmError &&
        e.status === "FAILED_PRECONDITION" &&
        /no longer a node setting/.test(e.message) &&
        /--vae-tiling/.test(e.message),
    );
});

test.after(async () => (await runtime).close());
