"""python -m framefarm_export.random_pipeline --like TINY_PIPELINE --out DIR [--double 2 --single 4 --text-layers 4]

Writes a diffusers-layout FramePack pipeline at the real model's widths with random weights: the
Llama-3-8B-width text encoder (reduced depth), CLIP-L text, SigLIP so400m (flux_redux_bfl's image
encoder), HunyuanVideo's VAE at its own config, and the FramePack transformer at the real width
with --double/--single blocks (20 + 40 is the full model). Real weights (~30 GB) cannot be
downloaded where framefarm is built; this folder lets the exporter, the GPU nodes and diffusers'
pipeline run the real shapes, so speed, memory and numerics can be compared on one GPU. Tokenizers,
prompt template and scheduler come from --like (the tiny reference model): their vocabularies fit in
the real ones, so any prompt tokenizes to valid ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

# Shapes of the released models (configs of the repositories the README names).
LLAMA_3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
                  bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
              projection_dim=768, vocab_size=49408, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=2)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, image_size=384,
                     patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def transformer_config(double: int, single: int) -> dict:
    return dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=double,
                num_single_layers=single, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
                guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
                image_condition_type=None, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True)


def randomize(module: torch.nn.Module, std: float = 0.02) -> None:
    """Weights of a sane scale: diffusers leaves some projections at zero, which would hide work."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build(like: str, out: str, double: int, single: int, text_layers: int, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

    os.makedirs(out, exist_ok=True)
    for folder in ("tokenizer", "tokenizer_2", "scheduler"):
        shutil.copytree(os.path.join(like, folder), os.path.join(out, folder), dirs_exist_ok=True)
    for f in ("model_index.json", "framepack_prompt_template.json"):
        shutil.copyfile(os.path.join(like, f), os.path.join(out, f))
    fe = json.load(open(os.path.join(like, "feature_extractor", "preprocessor_config.json"), encoding="utf-8"))
    fe["size"] = {"height": SIGLIP_SO400M["image_size"], "width": SIGLIP_SO400M["image_size"]}
    os.makedirs(os.path.join(out, "feature_extractor"), exist_ok=True)
    json.dump(fe, open(os.path.join(out, "feature_extractor", "preprocessor_config.json"), "w"), indent=1)

    times = {}
    torch.manual_seed(0)
    parts = {
        "text_encoder": lambda: LlamaModel(LlamaConfig(num_hidden_layers=text_layers, **LLAMA_3_8B)),
        "text_encoder_2": lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        "image_encoder": lambda: SiglipVisionModel(SiglipVisionConfig(**SIGLIP_SO400M)),
        "vae": lambda: AutoencoderKLHunyuanVideo(),  # its defaults are HunyuanVideo's VAE
        "transformer": lambda: HunyuanVideoFramepackTransformer3DModel(**transformer_config(double, single)),
    }
    params = {}
    for name, make in parts.items():
        t0 = time.time()
        m = make().eval()
        if name in ("transformer", "text_encoder"):
            randomize(m)
        params[name] = sum(p.numel() for p in m.parameters())
        m.to(dtype).save_pretrained(os.path.join(out, name))
        del m
        times[name] = round(time.time() - t0, 1)
        print(f"  {name}: {params[name] / 1e9:.3f} B parameters, {times[name]} s", flush=True)
    info = {"double": double, "single": single, "text_layers": text_layers, "parameters": params, "seconds": times, "like": like}
    json.dump(info, open(os.path.join(out, "random-pipeline.json"), "w"), indent=1)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.random_pipeline")
    p.add_argument("--like", required=True, help="small pipeline folder whose tokenizers, template and scheduler to reuse")
    p.add_argument("--out", required=True)
    p.add_argument("--double", type=int, default=2, help="dual-stream transformer blocks (20 in the released model)")
    p.add_argument("--single", type=int, default=4, help="single-stream transformer blocks (40 in the released model)")
    p.add_argument("--text-layers", type=int, default=4, help="Llama layers (32 in the released model; the pipeline reads layer -3)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16", help="dtype of the saved weights")
    a = p.parse_args(argv)
    from .sources import DTYPES

    if a.text_layers < 3:
        raise SystemExit("error: --text-layers must be >= 3 (the pipeline takes hidden_states[-3])")
    build(a.like, a.out, a.double, a.single, a.text_layers, DTYPES[a.dtype])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
