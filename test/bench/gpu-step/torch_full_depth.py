"""PyTorch bf16 step of the FramePack transformer at any depth (20 + 40 blocks is the released
model, ~13B parameters), built directly on the GPU with random weights: the time per step and
peak memory that full-depth figures are extrapolated from, beside the 2 + 4 block export that
both sides run.

  python test/bench/gpu-step/torch_full_depth.py [--double 20 --single 40 --height 640 --width 640 --window 9]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from torch_step import median_ms, step_flops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--double", type=int, default=20)
    p.add_argument("--single", type=int, default=40)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--window", type=int, default=9)
    a = p.parse_args()
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framefarm_export.random_pipeline import transformer_config

    t0 = time.time()
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**transformer_config(a.double, a.single))
    model = model.to_empty(device="cuda").to(torch.bfloat16).eval()
    with torch.no_grad():
        for prm in model.parameters():
            torch.nn.init.normal_(prm, std=0.02)
        for buf_name, buf in model.named_buffers():
            buf.zero_()
    build_s = time.time() - t0
    params = sum(p.numel() for p in model.parameters())
    lh, lw, w = a.height // 8, a.width // 8, a.window
    dev, bf = "cuda", torch.bfloat16
    mask = torch.ones(1, 256, device=dev, dtype=bf)
    x = dict(
        hidden_states=torch.randn(1, 16, w, lh, lw, device=dev, dtype=bf), timestep=torch.tensor([900.0], device=dev, dtype=bf),
        encoder_hidden_states=torch.randn(1, 256, 4096, device=dev, dtype=bf), encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, 768, device=dev, dtype=bf), image_embeds=torch.randn(1, 729, 1152, device=dev, dtype=bf),
        indices_latents=torch.arange(1, 1 + w, device=dev), guidance=torch.tensor([10000.0], device=dev, dtype=bf),
        latents_clean=torch.randn(1, 16, 2, lh, lw, device=dev, dtype=bf), indices_latents_clean=torch.tensor([0, w + 1], device=dev),
        latents_history_2x=torch.randn(1, 16, 2, lh, lw, device=dev, dtype=bf), indices_latents_history_2x=torch.tensor([w + 2, w + 3], device=dev),
        latents_history_4x=torch.randn(1, 16, 16, lh, lw, device=dev, dtype=bf), indices_latents_history_4x=torch.arange(w + 4, w + 20, device=dev),
    )
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        ms = median_ms(lambda: model(**x, return_dict=False)[0], warmup=2, reps=5)
    tokens_img = w * (lh // 2) * (lw // 2) + 2 * (lh // 2) * (lw // 2) + (lh // 4) * (lw // 4) + 4 * (lh // 8) * (lw // 8)
    flops = step_flops(dict(heads=24, head_dim=128, double=a.double, single=a.single), tokens_img, 256 + 729)
    r = {"double": a.double, "single": a.single, "params": params, "build_s": round(build_s, 1), "step_ms": round(ms, 1),
         "tflops": round(flops / ms / 1e9, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
         "device": torch.cuda.get_device_name()}
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
