"""Loads a FramePack pipeline's parts from the diffusers layout.

The real model is spread over three repositories: hunyuanvideo-community/HunyuanVideo (text
encoders, tokenizers, VAE, scheduler; subfolders as in model_index.json), lllyasviel/FramePackI2V_HY
or lllyasviel/FramePack_F1_I2V_HY_20250503 (the transformer, config.json at the repository root) and
lllyasviel/flux_redux_bfl (image_encoder/ and feature_extractor/ subfolders). The tiny reference
model holds everything in one folder. Both load here through each class's from_pretrained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT_TEMPLATE_FILE = "framepack_prompt_template.json"


@dataclass
class Sources:
    src: str
    transformer_dir: str
    image_encoder_root: str
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    transformer: torch.nn.Module
    scheduler_config: dict
    feature_extractor_config: dict
    prompt_template: dict


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _subfolder(root: str, name: str) -> dict:
    """from_pretrained kwargs for component `name` of `root`: its subfolder, or the root itself
    when the repository holds that one model (FramePackI2V_HY has config.json at its root)."""
    if os.path.isdir(os.path.join(root, name)):
        return {"subfolder": name}
    if os.path.exists(os.path.join(root, "config.json")):
        return {}
    raise SystemExit(f"error: no {name}/ (or config.json) in {root}")


def prompt_template_for(src: str) -> dict:
    """The source's framepack_prompt_template.json, else diffusers' pipeline default (crop_start 95)."""
    path = os.path.join(src, PROMPT_TEMPLATE_FILE)
    if os.path.exists(path):
        t = _read_json(path)
    else:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE as t
    return {"template": t["template"], "crop_start": int(t["crop_start"])}


def load_sources(src: str, transformer: str | None, image_encoder: str | None, dtype: torch.dtype,
                 transformer_dtype: torch.dtype | None = None) -> Sources:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

    _read_json(os.path.join(src, "model_index.json"))  # fail early on a folder that is no pipeline
    transformer_root = transformer or src
    ie_root = image_encoder or src
    fe = "feature_extractor" if os.path.isdir(os.path.join(ie_root, "feature_extractor")) else ""
    kw = {"torch_dtype": dtype}
    return Sources(
        src=src,
        transformer_dir=transformer_root,
        image_encoder_root=ie_root,
        text_encoder=LlamaModel.from_pretrained(src, subfolder="text_encoder", **kw).eval(),
        text_encoder_2=CLIPTextModel.from_pretrained(src, subfolder="text_encoder_2", **kw).eval(),
        image_encoder=SiglipVisionModel.from_pretrained(ie_root, **_subfolder(ie_root, "image_encoder"), **kw).eval(),
        vae=AutoencoderKLHunyuanVideo.from_pretrained(src, subfolder="vae", **kw).eval(),
        transformer=HunyuanVideoFramepackTransformer3DModel.from_pretrained(
            transformer_root, **_subfolder(transformer_root, "transformer"), torch_dtype=transformer_dtype or dtype
        ).eval(),
        scheduler_config=_read_json(os.path.join(src, "scheduler", "scheduler_config.json")),
        feature_extractor_config=_read_json(os.path.join(ie_root, fe, "preprocessor_config.json")),
        prompt_template=prompt_template_for(src),
    )
