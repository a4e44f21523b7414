"""python3 -m framefarm_export.unipc_golden --framepack FRAMEPACK_DIR --out test/fixtures/unipc

Ground truth for framefarm's UniPC sampler (shared/sampler/unipc.ts) and flux time shift
(shared/sampler/time-shift.ts) without a real model: runs lllyasviel's own
`diffusers_helper/pipelines/k_diffusion_hunyuan.py` `sample_hunyuan` (which drives
`diffusers_helper/k_diffusion/uni_pc_fm.py` through `diffusers_helper/k_diffusion/wrapper.py`)
with a toy transformer whose float32 arithmetic TypeScript can repeat exactly, and stores the
noise, sigmas, every step's latents and denoised prediction, and the result.

FRAMEPACK_DIR is a checkout of lllyasviel/FramePack (never copied into framefarm). Runs on plain
torch (1.13 and newer, CPU); modules FramePack imports but this path never uses (tqdm, cv2,
einops, torchvision, safetensors) are stubbed when missing. Writes golden.safetensors (tensors)
and golden.json (each case's parameters) under --out, and schedules-<capability>.safetensors: the
schedule alone, which depends on the CPU kernel torch.linspace runs (ATEN_CPU_CAPABILITY: default,
avx2, avx512); run it once per capability (the sampler cases need torch's default for the machine,
avx2 on most x86-64 builds).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import struct
import sys
import types

import numpy as np
import torch


def stub_missing_modules():
    """FramePack's helpers import these at module level; the sampler path never calls them."""
    for name in ["cv2", "einops", "torchvision", "safetensors", "safetensors.torch"]:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    try:
        importlib.import_module("tqdm.auto")
    except ImportError:
        tqdm = types.ModuleType("tqdm")
        auto = types.ModuleType("tqdm.auto")
        auto.trange = lambda n, disable=False: range(n)
        tqdm.auto = auto
        sys.modules["tqdm"], sys.modules["tqdm.auto"] = tqdm, auto


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    codes = {np.float32: "F32", np.int64: "I64", np.float64: "F64"}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.tobytes()
        header[name] = {"dtype": codes[a.dtype.type], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class ToyTransformer(torch.nn.Module):
    """velocity = ((x * a) + (t * b)) + ((x * x) * c) + e * d, every op a separate float32 kernel.

    t is the timestep the wrapper passes (sigma * 1000), e the single value of
    encoder_hidden_states (the prompt: positive and negative differ), g the distilled guidance.
    """

    def __init__(self, shape, seed):
        super().__init__()
        g = torch.Generator("cpu").manual_seed(seed)
        self.a = torch.rand(shape, generator=g) * 0.5 - 1.0
        self.b = torch.rand(shape, generator=g) * 0.002 - 0.001
        self.c = torch.rand(shape, generator=g) * 0.02 - 0.01
        self.d = torch.rand(shape, generator=g) - 0.5
        self.calls = []

    def forward(self, hidden_states, timestep, encoder_hidden_states, guidance, return_dict=False, **kwargs):
        x = hidden_states.float()
        t = timestep.float().reshape(-1, 1, 1, 1, 1)
        e = encoder_hidden_states.float().reshape(-1, 1, 1, 1, 1)
        g = (guidance.float() / 10000.0).reshape(-1, 1, 1, 1, 1)
        out = ((x * self.a) + (t * self.b)) + ((x * x) * self.c) + (e * self.d) * g
        self.calls.append(out.clone())
        return (out,)


CASES = [
    # name, steps, variant, cfg, rescale, height, width, window, seed, distilled guidance
    ("bh1_25", 25, "bh1", 1.0, 0.0, 32, 48, 9, 31337, 10.0),
    ("bh2_25", 25, "bh2", 1.0, 0.0, 32, 48, 9, 31337, 10.0),
    ("bh1_1", 1, "bh1", 1.0, 0.0, 16, 16, 3, 7, 10.0),
    ("bh1_2", 2, "bh1", 1.0, 0.0, 16, 16, 3, 7, 10.0),
    ("bh2_3", 3, "bh2", 1.0, 0.0, 16, 32, 5, 8, 6.0),
    ("bh1_4_cfg", 4, "bh1", 3.0, 0.0, 16, 16, 3, 9, 10.0),
    ("bh2_7_cfg_rescale", 7, "bh2", 2.5, 0.7, 32, 16, 4, 10, 8.0),
]


def run_case(khy, uni, name, steps, variant, cfg, rescale, height, width, window, seed, gs):
    frames = window * 4 - 3
    shape = (1, 16, (frames + 3) // 4, height // 8, width // 8)
    model = ToyTransformer(shape[1:], seed + 1000)
    captured = {}
    orig_sample_unipc = khy.sample_unipc

    def sample_unipc(model_fn, noise, sigmas, extra_args=None, callback=None, disable=False, variant_=None):
        captured["noise"] = noise.clone()
        captured["sigmas"] = sigmas.clone()
        steps_x, steps_d = [], []

        def cb(d):
            steps_x.append(d["x"].clone())
            steps_d.append(d["denoised"].clone())

        out = orig_sample_unipc(model_fn, noise, sigmas, extra_args=extra_args, callback=cb, disable=True, variant=variant)
        captured["x"], captured["denoised"] = steps_x, steps_d
        return out

    khy.sample_unipc = sample_unipc
    try:
        pos = torch.full((1, 1, 1), 0.25)
        neg = torch.full((1, 1, 1), -0.75)
        mask = torch.ones((1, 1), dtype=torch.bool)
        pooled = torch.zeros((1, 1))
        out = khy.sample_hunyuan(
            transformer=model, sampler="unipc", width=width, height=height, frames=frames,
            real_guidance_scale=cfg, distilled_guidance_scale=gs, guidance_rescale=rescale,
            num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
            prompt_embeds=pos, prompt_embeds_mask=mask, prompt_poolers=pooled,
            negative_prompt_embeds=neg, negative_prompt_embeds_mask=mask, negative_prompt_poolers=pooled,
            device=torch.device("cpu"), dtype=torch.float32,
        )
    finally:
        khy.sample_unipc = orig_sample_unipc
    rec = {f"{name}.noise": captured["noise"].numpy(), f"{name}.sigmas": captured["sigmas"].numpy(), f"{name}.result": out.numpy()}
    for i, (x, d) in enumerate(zip(captured["x"], captured["denoised"])):
        rec[f"{name}.step{i}.x"] = x.numpy()
        rec[f"{name}.step{i}.denoised"] = d.numpy()
    rec[f"{name}.toy.a"], rec[f"{name}.toy.b"] = model.a.numpy(), model.b.numpy()
    rec[f"{name}.toy.c"], rec[f"{name}.toy.d"] = model.c.numpy(), model.d.numpy()
    meta = {"steps": steps, "variant": variant, "cfg": cfg, "rescale": rescale, "height": height, "width": width,
            "window": window, "seed": seed, "distilled_guidance": gs, "shape": list(shape),
            "seq_length": shape[2] * shape[3] * shape[4] // 4, "model_calls": len(model.calls),
            "positive": 0.25, "negative": -0.75}
    return rec, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.unipc_golden")
    p.add_argument("--framepack", required=True, help="a checkout of lllyasviel/FramePack")
    p.add_argument("--out", required=True)
    p.add_argument("--schedules-only", action="store_true")
    a = p.parse_args(argv)
    stub_missing_modules()
    sys.path.insert(0, os.path.abspath(a.framepack))
    khy = importlib.import_module("diffusers_helper.pipelines.k_diffusion_hunyuan")
    uni = importlib.import_module("diffusers_helper.k_diffusion.uni_pc_fm")
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    tensors, cases = {}, {}
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "avx2")
    with torch.inference_mode():
        sched, sched_tensors = {}, {}
        # The flux schedule alone, over step counts and sequence lengths (mu capped at ln 7 above ~1600).
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 10, 14, 15, 16, 17, 20, 25, 30, 31, 32, 33, 50, 64, 100, 200]:
            for seq in [1, 54, 256, 880, 1000, 1600, 4096, 14400]:
                mu = khy.calculate_flux_mu(seq, exp_max=7.0)
                sched_tensors[f"sched.{n}.{seq}"] = khy.get_flux_sigmas_from_mu(n, mu).numpy()
                sched[f"{n}.{seq}"] = {"steps": n, "seq_length": seq, "mu": mu}
        save_safetensors(os.path.join(a.out, f"schedules-{cap}.safetensors"), sched_tensors)
        if a.schedules_only:
            print(f"{len(sched_tensors)} schedules ({cap})")
            return 0
        for case in CASES:
            rec, meta = run_case(khy, uni, *case)
            tensors.update(rec)
            cases[case[0]] = meta
        # The global generator after torch.manual_seed: framefarm draws the image latents' sample from it.
        for s in [0, 31338, 2**40 + 5]:
            torch.manual_seed(s)
            tensors[f"global.{s}.a"] = torch.randn((1, 4, 1, 8, 12)).numpy()
            tensors[f"global.{s}.b"] = torch.randn((1, 4, 1, 8, 12)).numpy()
    save_safetensors(os.path.join(a.out, "golden.safetensors"), tensors)
    with open(os.path.join(a.out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"torch": torch.__version__, "cpu_capability": cap, "cases": cases, "schedules": sched}, f, indent=1)
    print(f"{len(tensors)} tensors, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
