"""python3 -m framefarm_export.vae_tiling_golden --tiny TINY_PIPELINE --out FILE

Ground truth for spatial VAE tiling (framefarm's --vae-tiling): diffusers' own
AutoencoderKLHunyuanVideo with vae.enable_tiling(...) decoding seeded random latents, in float32
on the CPU, with the tiny pipeline's VAE (TINY_PIPELINE/vae, e.g. ../shared/reference/tiny-framepack).
Each case stores <case>.latents (what vae.decode receives) and <case>.sample (diffusers' output);
the safetensors metadata holds each case's tiling sizes. Runs on torch 1.13 (Debian's
python3-torch) with diffusers' source on PYTHONPATH through torch_compat.py, or on torch 2.x.

Cases (latent tile = sample tile // 8; rows and columns start every stride, the last ones partial):
  * default: diffusers' default tiles (256 px, stride 192) on 1 x 34 x 50 latents: 2 x 3 tiles,
    the last row 10 and the last column 2 latents.
  * small_temporal: 64 px tiles, stride 48, on 5 x 10 x 14 latents: framewise decoding (two
    temporal tiles of 5 and 2 latent frames) with each temporal tile spatially tiled 2 x 3.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from . import torch_compat

CASES = [
    {"name": "default", "shape": [1, 4, 1, 34, 50], "seed": 1, "tile": 256, "stride": 192},
    {"name": "small_temporal", "shape": [1, 4, 5, 10, 14], "seed": 2, "tile": 64, "stride": 48},
]


def load_vae(tiny):
    torch_compat.install()

    def imports():
        from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import AutoencoderKLHunyuanVideo
        return AutoencoderKLHunyuanVideo

    V = torch_compat.import_with_stubs(imports)
    from safetensors.torch import load_file

    m = V.from_config(json.load(open(os.path.join(tiny, "vae", "config.json"))))
    missing, unexpected = m.load_state_dict(load_file(os.path.join(tiny, "vae", "diffusion_pytorch_model.safetensors")), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return m.eval().float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    vae = load_vae(a.tiny)
    arrays, meta = {}, {}
    for c in CASES:
        g = torch.Generator("cpu").manual_seed(c["seed"])
        z = torch.randn(c["shape"], generator=g, dtype=torch.float32)
        vae.enable_tiling(tile_sample_min_height=c["tile"], tile_sample_min_width=c["tile"],
                          tile_sample_stride_height=c["stride"], tile_sample_stride_width=c["stride"])
        with torch.no_grad():
            out = vae.decode(z).sample
            vae.disable_tiling()
            untiled = vae.decode(z).sample
        d = (out - untiled).norm() / untiled.norm()
        print(c["name"], tuple(z.shape), "->", tuple(out.shape), f"tiled vs untiled relL2 {d.item():.3e}")
        arrays[f"{c['name']}.latents"] = z.numpy()
        arrays[f"{c['name']}.sample"] = out.numpy()
        meta[c["name"]] = json.dumps({"tile_sample_min": c["tile"], "tile_sample_stride": c["stride"], "seed": c["seed"]})
    meta["torch"] = torch.__version__
    torch_compat.st_write(a.out, arrays, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
