"""The PyTorch side of the gpu-step benchmark, and the ONNX export the gpu-node side runs.

Builds HunyuanVideoFramepackTransformer3DModel at the real width (24 heads x 128, text 4096,
pooled 768, image_proj 1152, 16 latent channels, rope (16, 56, 56)) with reduced depth and random
weights, times one denoising step in bf16 with SDPA on the GPU (CUDA events, median), measures the
bf16 matmul ceiling, then exports the same weights in fp16 with framefarm's exporter and saves the
step's inputs and PyTorch's output for the TypeScript side.

  python test/bench/gpu-step/torch_step.py --out DIR [--double 2 --single 4 --height 640 --width 640 --window 9]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "gpu-node", "export"))


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def step_flops(cfg, tokens_img, tokens_txt):
    """Matmul FLOPs of one step (attention scores + projections + MLPs), refiner and embedders ignored."""
    d, n = cfg["heads"] * cfg["head_dim"], tokens_img + tokens_txt
    mlp = 4 * d
    double = 2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d  # both streams' qkv+out and MLPs, joint attention
    single = 2 * n * (3 * d * d + d * mlp + (d + mlp) * d) + 4 * n * n * d
    return cfg["double"] * double + cfg["single"] * single


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--text", type=int, default=256, help="real text tokens after masking")
    a = p.parse_args()
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    cfg = dict(heads=24, head_dim=128, double=a.double, single=a.single)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=a.double,
        num_single_layers=a.single, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
        image_condition_type=None, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True,
    ).eval()
    # Random weights of a sane scale (the default init leaves some projections at zero).
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() >= 2:
                torch.nn.init.normal_(prm, std=0.02)
    params = sum(p.numel() for p in model.parameters())

    lh, lw, w = a.height // 8, a.width // 8, a.window
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 256)
    mask[:, : a.text] = 1
    inputs = {
        "hidden_states": torch.randn(1, 16, w, lh, lw, generator=g),
        "timestep": torch.tensor([900.0]),
        "encoder_hidden_states": torch.randn(1, 256, 4096, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, 768, generator=g),
        "image_embeds": torch.randn(1, 729, 1152, generator=g),
        "indices_latents": torch.arange(1, 1 + w),
        "guidance": torch.tensor([10000.0]),
        "latents_clean": torch.randn(1, 16, 2, lh, lw, generator=g),
        "indices_latents_clean": torch.tensor([0, w + 1]),
        "latents_history_2x": torch.randn(1, 16, 2, lh, lw, generator=g),
        "indices_latents_history_2x": torch.tensor([w + 2, w + 3]),
        "latents_history_4x": torch.randn(1, 16, 16, lh, lw, generator=g),
        "indices_latents_history_4x": torch.arange(w + 4, w + 20),
    }
    tokens_img = w * (lh // 2) * (lw // 2) + 2 * (lh // 2) * (lw // 2) + (lh // 4) * (lw // 4) + 4 * (lh // 8) * (lw // 8)
    tokens_txt = a.text + 729
    flops = step_flops(cfg, tokens_img, tokens_txt)

    dev = torch.device("cuda")
    m16 = model.to(dev, torch.bfloat16)
    cuda_in = {k: (v.to(dev, torch.bfloat16) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        run = lambda: m16(**cuda_in, return_dict=False)[0]
        ms = median_ms(run)
        out_bf16 = run().float().cpu()
    peak = torch.cuda.max_memory_allocated() / 2**30
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm_ms = median_ms(lambda: x @ y)
    ceiling = 2 * 8192**3 / (mm_ms / 1e3) / 1e12
    del x, y

    # The gpu-node side: the same weights exported in fp16 by framefarm's exporter (static shapes).
    m16h = model.to("cpu", torch.float32)
    from framefarm_export import onnx_export, wrappers

    t0 = time.time()
    wrapper = wrappers.Transformer(m16h.to(dev, torch.float16), torch.float16).eval()
    program = torch.onnx.export(wrapper, tuple(v.to(dev) for v in inputs.values()), input_names=list(inputs), output_names=["noise_pred"], dynamo=True, optimize=True)
    onnx_path = os.path.join(a.out, "transformer.onnx")
    program.save(onnx_path, external_data=True)
    export_s = time.time() - t0
    with torch.no_grad():
        out_fp16 = wrapper(*[v.to(dev) for v in inputs.values()]).float().cpu()

    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "torch_bf16_out": out_bf16, "torch_fp16_out": out_fp16}, os.path.join(a.out, "step.safetensors"))
    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "params": params, "config": cfg,
        "latent": [w, lh, lw], "tokens_image": tokens_img, "tokens_text": tokens_txt, "step_flops": flops,
        "torch_bf16_step_ms": ms, "torch_tflops": flops / (ms / 1e3) / 1e12, "torch_peak_gib": peak,
        "bf16_matmul_ceiling_tflops": ceiling, "onnx_export_seconds": export_s,
    }
    json.dump(report, open(os.path.join(a.out, "torch.json"), "w"), indent=1)
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
