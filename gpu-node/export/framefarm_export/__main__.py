"""python -m framefarm_export --src PIPELINE --out BUNDLE [--transformer DIR] [--image-encoder DIR] [--dtype fp16]"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="framefarm_export", description="Export a diffusers FramePack pipeline to a framefarm ONNX bundle.")
    p.add_argument("--src", required=True, help="diffusers pipeline folder (e.g. hunyuanvideo-community/HunyuanVideo)")
    p.add_argument("--transformer", help="FramePack transformer folder (lllyasviel/FramePackI2V_HY or FramePack_F1_I2V_HY_20250503); default SRC/transformer")
    p.add_argument("--image-encoder", help="folder holding image_encoder/ and feature_extractor/ (lllyasviel/flux_redux_bfl); default SRC")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="compute dtype inside the graphs (I/O stays float32)")
    p.add_argument("--sampling-type", choices=["inverted_anti_drifting", "vanilla"], help="default: vanilla if the transformer path names F1")
    p.add_argument("--max-sequence-length", type=int, default=256, help="Llama tokens after the template crop (diffusers' default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import diffusers
    import torch
    import transformers

    from . import onnx_export as ox
    from .manifest import copy_tokenizer, write_manifest
    from .sources import DTYPES, load_sources

    dtype = DTYPES[args.dtype]
    sampling = args.sampling_type or ("vanilla" if "f1" in (args.transformer or "").lower() else "inverted_anti_drifting")
    os.makedirs(args.out, exist_ok=True)
    src = load_sources(args.src, args.transformer, args.image_encoder, dtype)
    vae_dtype = next(src.vae.parameters()).dtype
    seq_len = src.prompt_template["crop_start"] + args.max_sequence_length
    # Framewise decoding hands the decoder tiles of tile_sample_min_num_frames / ratio + 1 latent frames.
    max_latent_frames = int(src.vae.tile_sample_min_num_frames) // src.vae.config.temporal_compression_ratio + 1
    image_size = {"height": src.image_encoder.config.image_size, "width": src.image_encoder.config.image_size}

    def step(name, fn, *a):
        print(f"exporting {name} ...", flush=True)
        return fn(*a)

    externals = {
        "text_encoder": step("text_encoder", ox.export_text_encoder, src, args.out, seq_len, 2),
        "text_encoder_2": step("text_encoder_2", ox.export_text_encoder_2, src, args.out, src.text_encoder_2.config.max_position_embeddings),
        "image_encoder": step("image_encoder", ox.export_image_encoder, src, args.out, image_size, dtype),
        "vae_encoder": step("vae_encoder", ox.export_vae_encoder, src, args.out, src.vae.config.spatial_compression_ratio, vae_dtype),
        "vae_decoder": step("vae_decoder", ox.export_vae_decoder, src, args.out, max_latent_frames, vae_dtype),
        "transformer": step("transformer", ox.export_transformer, src, args.out, dtype, args.max_sequence_length),
    }
    copy_tokenizer(os.path.join(args.src, "tokenizer"), args.out, "tokenizer")
    copy_tokenizer(os.path.join(args.src, "tokenizer_2"), args.out, "tokenizer_2")
    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    write_manifest(args.out, src, args, args.dtype, sampling, externals, versions, max_latent_frames)
    print(f"wrote bundle {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
