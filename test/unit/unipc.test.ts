/**
 * lllyasviel's sampler against its own code: test/fixtures/unipc holds what FramePack's
 * sample_hunyuan (k_diffusion_hunyuan.py, uni_pc_fm.py, wrapper.py) did with a toy transformer
 * (gpu-node/export/framefarm_export/unipc_golden.py, torch on CPU). The noise and the sigmas must
 * be bit-identical; every step's latents and denoised prediction within float32 rounding.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { calculateFluxMu, fluxSeqLength, fluxSigmas, linspaceF32 } from "../../shared/sampler/time-shift.js";
import {
  cfgCombine,
  flowToDenoised,
  rescaleNoiseCfg,
  sampleUniPC,
  solveF32,
  unipcCoefficients,
  type UniPCVariant,
} from "../../shared/sampler/unipc.js";
import { FarmError } from "../../shared/errors.js";
import { repoRoot } from "../support/paths.js";

const dir = path.join(repoRoot(), "test", "fixtures", "unipc");
const golden = decodeSafetensors(readFileSync(path.join(dir, "golden.safetensors"))).tensors;
interface CaseMeta {
  steps: number;
  variant: UniPCVariant;
  cfg: number;
  rescale: number;
  seed: number;
  distilled_guidance: number;
  shape: number[];
  seq_length: number;
  model_calls: number;
  positive: number;
  negative: number;
}
const meta = JSON.parse(readFileSync(path.join(dir, "golden.json"), "utf8")) as {
  cases: Record<string, CaseMeta>;
  schedules: Record<string, { steps: number; seq_length: number; mu: number }>;
};
const get = (k: string): F32 => {
  const t = golden.get(k);
  assert.ok(t !== undefined, `golden lacks ${k}`);
  return t as F32;
};
const f = Math.fround;

function maxRel(a: F32, b: F32): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.numel; i++) {
    num = Math.max(num, Math.abs(a.data[i]! - b.data[i]!));
    den = Math.max(den, Math.abs(b.data[i]!));
  }
  return num / Math.max(den, 1e-12);
}

for (const cpu of ["default", "avx2", "avx512"] as const) {
  test(`flux schedule (${cpu} kernel): bit-identical to get_flux_sigmas_from_mu over step counts and sequence lengths`, () => {
    const sched = decodeSafetensors(readFileSync(path.join(dir, `schedules-${cpu}.safetensors`))).tensors;
    let n = 0;
    for (const [key, s] of Object.entries(meta.schedules)) {
      assert.equal(calculateFluxMu(s.seq_length), s.mu, `mu for ${s.seq_length}`);
      assert.deepEqual(fluxSigmas(s.steps, s.seq_length, { cpu }), sched.get(`sched.${key}`)!.data, `sigmas ${key}`);
      n++;
    }
    assert.ok(n > 100);
  });
}

test("flux schedule helpers: linspace halves, seq length floor, mu cap, shift override", () => {
  assert.deepEqual([...linspaceF32(1, 0, 5)], [1, 0.75, 0.5, 0.25, 0]);
  assert.equal(fluxSeqLength(9, 80, 80), 14400);
  assert.equal(fluxSeqLength(3, 3, 3), 6);
  assert.equal(calculateFluxMu(14400), Math.log(7));
  const shifted = fluxSigmas(2, 1, { shift: 3 });
  const e = f(3);
  assert.equal(shifted[1], f(f(1 / f(e + f(f(1 / 0.5) - 1))) * e));
  assert.throws(
    () => fluxSigmas(0, 10),
    (err: unknown) => err instanceof FarmError && err.status === "INVALID_ARGUMENT",
  );
});

test("the global generator after torch.manual_seed is TorchGenerator(seed)", () => {
  for (const s of [0n, 31338n, 2n ** 40n + 5n]) {
    const g = new TorchGenerator(s);
    assert.deepEqual(g.randn([1, 4, 1, 8, 12]).data, get(`global.${s}.a`).data);
    assert.deepEqual(g.randn([1, 4, 1, 8, 12]).data, get(`global.${s}.b`).data);
  }
});

test("solveF32 solves small systems with partial pivoting", () => {
  const x = solveF32(
    [
      [1, 1, 1],
      [-2, -0.5, 1],
      [4, 0.25, 1],
    ],
    [1, 2, 3],
  );
  const exact = [1, 2, 3];
  const A = [
    [1, 1, 1],
    [-2, -0.5, 1],
    [4, 0.25, 1],
  ];
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(A[i]!.reduce((s, a, j) => s + a * x[j]!, 0) - exact[i]!) < 1e-5);
  assert.throws(
    () =>
      solveF32(
        [
          [1, 1],
          [1, 1],
        ],
        [1, 2],
      ),
    /singular/,
  );
});

test("UniPC coefficients: order 1 and 2 use the fixed 0.5 weights; bh1 and bh2 differ only in B(h)", () => {
  const c1 = unipcCoefficients([1], 0.9, 1, "bh1");
  assert.deepEqual(c1.rhosC, [0.5]);
  assert.equal(c1.rhosP, null);
  const c2 = unipcCoefficients([1, 0.9], 0.8, 2, "bh2");
  assert.deepEqual(c2.rhosP, [0.5]);
  assert.equal(c2.rhosC.length, 2);
  assert.equal(c2.bH, c2.hPhi1);
  assert.equal(
    unipcCoefficients([1, 0.9], 0.8, 2, "bh1").bH,
    -f(f(-Math.fround(Math.log(0.8))) - f(-Math.fround(Math.log(0.9)))),
  );
  assert.throws(() => unipcCoefficients([1], 0.5, 2, "bh1"), RangeError);
});

/** The golden's toy transformer: ((x*a + t*b) + (x*x)*c) + (e*d)*g, each op rounded to float32. */
function toyVelocity(name: string, x: F32, timestep: number, e: number, guidance: number): F32 {
  const [a, b, c, d] = ["a", "b", "c", "d"].map((k) => get(`${name}.toy.${k}`).data);
  const g = f(guidance / 10000);
  const out = new Float32Array(x.numel);
  for (let i = 0; i < out.length; i++) {
    const v = x.data[i]!;
    out[i] = f(f(f(f(v * a![i]!) + f(timestep * b![i]!)) + f(f(v * v) * c![i]!)) + f(f(e * d![i]!) * g));
  }
  return new Tensor("float32", x.shape, out);
}

for (const [name, m] of Object.entries(meta.cases)) {
  test(`UniPC ${name} (${m.variant}, ${m.steps} steps, cfg ${m.cfg}, rescale ${m.rescale}): step for step as uni_pc_fm.py`, async () => {
    const noise = new TorchGenerator(BigInt(m.seed)).randn(m.shape);
    assert.deepEqual(noise.data, get(`${name}.noise`).data, "noise");
    const [, , T, H, W] = m.shape as [number, number, number, number, number];
    assert.equal(fluxSeqLength(T, H, W), m.seq_length);
    const sigmas = fluxSigmas(m.steps, m.seq_length);
    assert.deepEqual(sigmas, get(`${name}.sigmas`).data, "sigmas");
    const guidance = f(m.distilled_guidance * 1000);
    let calls = 0;
    const model = async (x: F32, sigma: number): Promise<F32> => {
      const t = f(sigma * 1000);
      const pos = toyVelocity(name, x, t, f(m.positive), guidance);
      calls++;
      let pred = pos;
      if (m.cfg !== 1) {
        pred = cfgCombine(pos, toyVelocity(name, x, t, f(m.negative), guidance), m.cfg);
        calls++;
      }
      return flowToDenoised(x, rescaleNoiseCfg(pred, pos, m.rescale), sigma);
    };
    let worst = 0;
    const result = await sampleUniPC(model, noise, sigmas, m.variant, {
      onStep: (i, x, denoised) => {
        worst = Math.max(
          worst,
          maxRel(x, get(`${name}.step${i}.x`)),
          maxRel(denoised, get(`${name}.step${i}.denoised`)),
        );
      },
    });
    assert.equal(calls, m.model_calls);
    const end = maxRel(result, get(`${name}.result`));
    // torch computes log and expm1 of the sigmas with Sleef (1-ulp, not correctly rounded), which
    // moves UniPC's coefficients by an ulp; CFG rescale's std is torch's own reduction. Measured:
    // at most ~3e-7 of the largest value (~2e-6 with rescale).
    const tol = m.rescale !== 0 ? 1e-5 : 1e-6;
    if (process.env["FRAMEFARM_PRINT_DIFFS"] === "1") console.log(`${name}: steps ${worst}, result ${end}`);
    assert.ok(worst <= tol && end <= tol, `max relative difference ${worst} (steps), ${end} (result)`);
  });
}
