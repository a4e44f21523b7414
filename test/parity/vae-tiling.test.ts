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
import { decodeVideo, vaeTilingFromEnv } from "../../gpu-node/stages/decode-latents.js";
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

test("FRAMEFARM_VAE_TILING: unset or 0 is off, 1 is on, anything else is refused", () => {
  assert.equal(vaeTilingFromEnv({}), false);
  assert.equal(vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "0" }), false);
  assert.equal(vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "1" }), true);
  assert.throws(() => vaeTilingFromEnv({ FRAMEFARM_VAE_TILING: "yes" }), /must be 0 or 1/);
});

test.after(async () => (await runtime).close());
