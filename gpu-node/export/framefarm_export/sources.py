"""Loads a FramePack pipeline's parts from the diffusers layout.

The real model is spread over three repositories (HunyuanVideo for text encoders, tokenizers, VAE
and scheduler; FramePackI2V_HY or FramePack_F1 for the transformer; flux_redux_bfl for the SigLIP
image encoder); the tiny reference model holds everything in one folder. Both load here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# diffusers' DEFAULT_PROMPT_TEMPLATE for HunyuanVideo (used when the source has no template file).
DEFAULT_PROMPT_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 95,
}


@dataclass
class Sources:
    src: str
    transformer_dir: str
    image_encoder_dir: str
    feature_extractor_dir: str
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    transformer: torch.nn.Module
    scheduler_config: dict
    feature_extractor_config: dict
    prompt_template: dict


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _subfolder(root: str, name: str) -> str:
    """A component folder: root/name when it exists, else root itself (a single-model repo)."""
    sub = os.path.join(root, name)
    return sub if os.path.isdir(sub) else root


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise SystemExit(f"error: {what} not found at {path}")
    return path


def load_sources(src: str, transformer: str | None, image_encoder: str | None, dtype: torch.dtype) -> Sources:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

    _require(os.path.join(src, "model_index.json"), "diffusers pipeline (model_index.json)")
    transformer_dir = _subfolder(transformer, "transformer") if transformer else os.path.join(src, "transformer")
    ie_root = image_encoder or src
    image_encoder_dir = _require(_subfolder(ie_root, "image_encoder"), "image encoder")
    feature_extractor_dir = _require(_subfolder(ie_root, "feature_extractor"), "feature extractor")

    template_file = os.path.join(src, "framepack_prompt_template.json")
    prompt_template = _read_json(template_file) if os.path.exists(template_file) else DEFAULT_PROMPT_TEMPLATE

    kw = {"torch_dtype": dtype}
    return Sources(
        src=src,
        transformer_dir=transformer_dir,
        image_encoder_dir=image_encoder_dir,
        feature_extractor_dir=feature_extractor_dir,
        text_encoder=LlamaModel.from_pretrained(_require(os.path.join(src, "text_encoder"), "text_encoder"), **kw).eval(),
        text_encoder_2=CLIPTextModel.from_pretrained(_require(os.path.join(src, "text_encoder_2"), "text_encoder_2"), **kw).eval(),
        image_encoder=SiglipVisionModel.from_pretrained(image_encoder_dir, **kw).eval(),
        # The VAE runs in float32 in diffusers' FramePack examples and in the reference; fp16
        # VAEs of HunyuanVideo overflow, so the VAE keeps float32 unless bf16 is asked for.
        vae=AutoencoderKLHunyuanVideo.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32 if dtype == torch.float16 else dtype).eval(),
        transformer=HunyuanVideoFramepackTransformer3DModel.from_pretrained(_require(transformer_dir, "transformer"), **kw).eval(),
        scheduler_config=_read_json(_require(os.path.join(src, "scheduler", "scheduler_config.json"), "scheduler config")),
        feature_extractor_config=_read_json(_require(os.path.join(feature_extractor_dir, "preprocessor_config.json"), "SigLIP preprocessor config")),
        prompt_template=prompt_template,
    )
