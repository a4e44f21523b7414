"""The VAE side of the gpu-step benchmark: one section's decode.

Builds diffusers' AutoencoderKLHunyuanVideo at its default (HunyuanVideo) config with random
weights, times vae.decode of one section's latents in fp16 on the GPU (framewise decoding, as the
pipeline calls it; CUDA events, median), exports the decoder in fp16 with framefarm's exporter
(dynamic 1..5 frames, h, w: the bundle's vae_decoder graph) and saves the latents and PyTorch's
output for the first tile for vae.ts.

  python test/bench/gpu-step/torch_vae.py --out DIR [--height 640 --width 640 --latent-frames 18]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "gpu-node", "export"))
from torch_step import median_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--latent-frames", type=int, default=18, help="a middle section decodes 2 x window latent frames")
    a = p.parse_args()
    from diffusers import AutoencoderKLHunyuanVideo

    from framefarm_export import onnx_export

    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo().eval()
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, vae.config.latent_channels, a.latent_frames, a.height // 8, a.width // 8, generator=g)
    v16 = vae.to(dev, torch.float16)
    zc = z.to(dev, torch.float16)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        ms = median_ms(lambda: v16.decode(zc).sample, warmup=1, reps=3)
        tile0 = v16.decoder(v16.post_quant_conv(zc[:, :, :5])).float().cpu()
    peak = torch.cuda.max_memory_allocated() / 2**30
    t0 = time.time()
    ext, axes = onnx_export.export_vae_decoder(types.SimpleNamespace(vae=vae.to("cpu")), a.out, 5, torch.float16)
    export_s = time.time() - t0
    save_file({"latents": z.contiguous(), "torch_fp16_tile0": tile0.contiguous()}, os.path.join(a.out, "vae.safetensors"))
    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "params": sum(p.numel() for p in vae.parameters()),
        "latents": list(z.shape), "torch_fp16_vae_decode_ms": ms, "torch_vae_peak_gib": peak, "onnx_export_seconds": export_s,
        "onnx_dynamic": axes, "external_data": ext, "tiling": {k: getattr(vae, k) for k in ("tile_sample_min_num_frames", "tile_sample_stride_num_frames", "use_framewise_decoding")},
    }
    json.dump(report, open(os.path.join(a.out, "vae.json"), "w"), indent=1)
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
