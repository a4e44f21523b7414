"""Writes framefarm-bundle.json: everything the TypeScript runtime needs besides the graphs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from . import __version__
from .wrappers import TRANSFORMER_INPUTS

HISTORY_SIZES = {"inverted_anti_drifting": [1, 2, 16], "vanilla": [16, 2, 1]}
DEFAULT_LATENT_WINDOW_SIZE = 9
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_tokenizer(src_dir: str, out_dir: str, name: str) -> None:
    """Copies tokenizer.json + tokenizer_config.json into out_dir/name.

    Some repositories ship only slow-tokenizer files (HunyuanVideo's tokenizer_2 has vocab.json +
    merges.txt): the TypeScript side needs tokenizer.json, so the fast tokenizer writes one."""
    dst = os.path.join(out_dir, name)
    os.makedirs(dst, exist_ok=True)
    if os.path.exists(os.path.join(src_dir, "tokenizer.json")):
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(src_dir, f)):
                shutil.copyfile(os.path.join(src_dir, f), os.path.join(dst, f))
    else:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src_dir, use_fast=True).save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.exists(os.path.join(dst, f)):
            raise SystemExit(f"error: {name}/{f} could not be produced from {src_dir}")


def component(out_dir, file, inputs, outputs, external, **extra):
    entry = {"file": file, "external_data": external, "inputs": inputs, "outputs": outputs, "sha256": sha256(os.path.join(out_dir, file))}
    entry.update(extra)
    return entry


def write_manifest(out_dir, src, args, dtype_name, sampling_type, externals, versions, max_latent_frames, transformer_dtype=None):
    te = src.text_encoder.config
    te2 = src.text_encoder_2.config
    vc = src.image_encoder.config
    fe = src.feature_extractor_config
    vae = src.vae.config
    tr = src.transformer.config
    size = fe.get("size", {})
    if "height" not in size:
        size = {"height": size.get("shortest_edge", vc.image_size), "width": size.get("shortest_edge", vc.image_size)}
    scheduler = {"class": src.scheduler_config.get("_class_name", "FlowMatchEulerDiscreteScheduler")}
    scheduler.update({k: v for k, v in src.scheduler_config.items() if not k.startswith("_")})
    manifest = {
        "format": "framefarm-bundle",
        "version": 1,
        "created_by": f"framefarm_export {__version__} ({versions})",
        "source": {"pipeline": args.src, "transformer": args.transformer, "image_encoder": args.image_encoder},
        "dtype": dtype_name,
        "sampling_type": sampling_type,
        "components": {
            "text_encoder": component(out_dir, "text_encoder.onnx", ["input_ids", "attention_mask"], ["hidden_states"], externals["text_encoder"]),
            "text_encoder_2": component(out_dir, "text_encoder_2.onnx", ["input_ids"], ["pooled"], externals["text_encoder_2"]),
            "image_encoder": component(out_dir, "image_encoder.onnx", ["pixel_values"], ["last_hidden_state"], externals["image_encoder"]),
            "vae_encoder": component(out_dir, "vae_encoder.onnx", ["sample"], ["mean", "std"], externals["vae_encoder"]),
            "vae_decoder": component(out_dir, "vae_decoder.onnx", ["latents"], ["sample"], externals["vae_decoder"], max_latent_frames=max_latent_frames),
            "transformer": component(out_dir, "transformer.onnx", TRANSFORMER_INPUTS, ["noise_pred"], externals["transformer"],
                                     dtype=transformer_dtype or dtype_name),
        },
        "text_encoder": {
            "tokenizer": "tokenizer/tokenizer.json",
            "tokenizer_config": "tokenizer/tokenizer_config.json",
            "hidden_size": te.hidden_size,
            "max_sequence_length": args.max_sequence_length,
            "num_hidden_layers_to_skip": 2,
            "prompt_template": {"template": src.prompt_template["template"], "crop_start": src.prompt_template["crop_start"]},
        },
        "text_encoder_2": {
            "tokenizer": "tokenizer_2/tokenizer.json",
            "tokenizer_config": "tokenizer_2/tokenizer_config.json",
            "hidden_size": te2.hidden_size,
            "max_length": te2.max_position_embeddings,
        },
        "image_encoder": {
            "image_size": {"height": size["height"], "width": size["width"]},
            "image_mean": list(fe.get("image_mean", [0.5, 0.5, 0.5])),
            "image_std": list(fe.get("image_std", [0.5, 0.5, 0.5])),
            "resample": RESAMPLE.get(fe.get("resample", 3), "bicubic"),
            "hidden_size": vc.hidden_size,
            "num_tokens": (vc.image_size // vc.patch_size) ** 2,
        },
        "vae": {
            "latent_channels": vae.latent_channels,
            "scaling_factor": vae.scaling_factor,
            "spatial_compression_ratio": vae.spatial_compression_ratio,
            "temporal_compression_ratio": vae.temporal_compression_ratio,
            "use_framewise_decoding": bool(getattr(src.vae, "use_framewise_decoding", True)),
            "tile_sample_min_num_frames": int(src.vae.tile_sample_min_num_frames),
            "tile_sample_stride_num_frames": int(src.vae.tile_sample_stride_num_frames),
        },
        "transformer": {
            "in_channels": tr.in_channels,
            "out_channels": tr.out_channels or tr.in_channels,
            "patch_size": tr.patch_size,
            "patch_size_t": tr.patch_size_t,
            "text_embed_dim": tr.text_embed_dim,
            "pooled_projection_dim": tr.pooled_projection_dim,
            "image_proj_dim": tr.image_proj_dim,
            "guidance_embeds": bool(tr.guidance_embeds),
            "num_attention_heads": tr.num_attention_heads,
            "attention_head_dim": tr.attention_head_dim,
        },
        "scheduler": scheduler,
        "framepack": {"history_sizes": HISTORY_SIZES, "default_latent_window_size": DEFAULT_LATENT_WINDOW_SIZE},
    }
    with open(os.path.join(out_dir, "framefarm-bundle.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest
