"""python -m framefarm_export.reference_cases --src PIPELINE --template TEMPLATE.json --out DIR

Runs diffusers' HunyuanVideoFramepackPipeline on cases whose values the public reference cases
do not use (more sections, non-square sizes, other window sizes, 64-bit seeds, long and unicode
prompts, one-section videos) and stores each call and its intermediates in the reference's form
(<name>.json, images, <name>.safetensors), so framefarm's parity test covers them too.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

LONG_PROMPT = (
    "A slow cinematic dolly shot through a rain-soaked neon market at night 🌧️🏮, vendors calling out, "
    "steam rising from noodle stalls, reflections shimmering in puddles, a cyclist weaving between "
    "umbrellas, café signs flickering in Japanese and Korean (「夜市」, 야시장), "
) * 12

CASES = [
    {"name": "inverted_six_sections_wide", "sampling_type": "inverted_anti_drifting", "seed": 123456789012, "num_frames": 180,
     "steps": 2, "prompt": "Waves roll onto a quiet beach at dawn.", "guidance_scale": 7.5, "height": 64, "width": 96,
     "img_seed": 11, "latent_window_size": 9},
    {"name": "vanilla_cfg_window3_tall", "sampling_type": "vanilla", "seed": 42, "num_frames": 25, "steps": 3,
     "prompt": "A dog {runs} across a field of flowers.", "negative_prompt": "low quality, jitter", "true_cfg_scale": 3.0,
     "guidance_scale": 6.0, "height": 96, "width": 64, "img_seed": 12, "latent_window_size": 3},
    {"name": "inverted_endframe_window6_long_prompt", "sampling_type": "inverted_anti_drifting", "seed": 2024, "num_frames": 80,
     "steps": 2, "prompt": LONG_PROMPT, "guidance_scale": 10.0, "height": 64, "width": 64, "img_seed": 13, "last_img_seed": 14,
     "latent_window_size": 6},
    {"name": "inverted_single_section", "sampling_type": "inverted_anti_drifting", "seed": 5, "num_frames": 1, "steps": 3,
     "prompt": "A candle flickers.", "guidance_scale": 10.0, "height": 64, "width": 64, "img_seed": 15, "latent_window_size": 9},
]


def make_image(seed, height, width, path):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([np.sin(x * rng.uniform(3, 9) + rng.uniform(0, 6)) for _ in range(3)], -1)
    img += 0.3 * np.sin(y[..., None] * rng.uniform(2, 7, 3))
    img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return Image.open(path).convert("RGB")


def run_case(pipe, case, template, out_dir):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import FramepackSamplingType

    name = case["name"]
    rec: dict[str, np.ndarray] = {}
    state = {"section": -1, "prompts": 0, "images": 0, "decodes": 0, "first_call": False}
    orig_encode, orig_prep_img, orig_prep_lat = pipe.encode_prompt, pipe.prepare_image_latents, pipe.prepare_latents
    orig_decode, orig_forward = pipe.vae.decode, pipe.transformer.forward

    def encode_prompt(*a, **k):
        embeds, pooled, mask = orig_encode(*a, **k)
        prefix = "" if state["prompts"] == 0 else "negative_"
        state["prompts"] += 1
        rec[f"{prefix}prompt_embeds"], rec[f"{prefix}pooled_prompt_embeds"] = embeds.numpy(), pooled.numpy()
        rec[f"{prefix}prompt_attention_mask"] = mask.long().numpy()
        return embeds, pooled, mask

    def prepare_image_latents(*a, **k):
        lat = orig_prep_img(*a, **k)
        rec["image_latents" if state["images"] == 0 else "last_image_latents"] = lat.numpy()
        state["images"] += 1
        return lat

    def prepare_latents(*a, **k):
        lat = orig_prep_lat(*a, **k)
        state["section"] += 1
        state["first_call"] = True
        rec[f"section{state['section']}.noise"] = lat.numpy()
        return lat

    def forward(*a, **k):
        out = orig_forward(*a, **k)
        if state["first_call"]:
            state["first_call"] = False
            rec[f"section{state['section']}.step0.transformer_out"] = out[0].float().numpy()
        return out

    def decode(z, *a, **k):
        out = orig_decode(z, *a, **k)
        d = state["decodes"]
        state["decodes"] += 1
        rec[f"decode{d}.in"] = z.numpy()
        if d == 0:
            rec["decode0.out"] = out[0].half().numpy()
        return out

    def on_step_end(p, i, t, kw):
        if i == case["steps"] - 1:
            rec[f"section{state['section']}.latents"] = kw["latents"].numpy()
        return {}

    pipe.encode_prompt, pipe.prepare_image_latents, pipe.prepare_latents = encode_prompt, prepare_image_latents, prepare_latents
    pipe.vae.decode, pipe.transformer.forward = decode, forward
    try:
        first = make_image(case["img_seed"], case["height"], case["width"], os.path.join(out_dir, f"{name}_first.png"))
        last = None
        if "last_img_seed" in case:
            last = make_image(case["last_img_seed"], case["height"], case["width"], os.path.join(out_dir, f"{name}_last.png"))
        frames = pipe(
            image=first, last_image=last, prompt=case["prompt"], negative_prompt=case.get("negative_prompt"),
            true_cfg_scale=case.get("true_cfg_scale", 1.0), height=case["height"], width=case["width"],
            num_frames=case["num_frames"], latent_window_size=case["latent_window_size"], num_inference_steps=case["steps"],
            guidance_scale=case["guidance_scale"], generator=torch.Generator("cpu").manual_seed(case["seed"]),
            output_type="np", prompt_template=template, sampling_type=FramepackSamplingType(case["sampling_type"]),
            callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
        ).frames[0]
    finally:
        pipe.encode_prompt, pipe.prepare_image_latents, pipe.prepare_latents = orig_encode, orig_prep_img, orig_prep_lat
        pipe.vae.decode, pipe.transformer.forward = orig_decode, orig_forward
    rec["frames_uint8"] = (np.asarray(frames) * 255).round().astype(np.uint8)
    meta = dict(case)
    meta.update({"first_image": f"{name}_first.png", "last_image": f"{name}_last.png" if last is not None else None,
                 "frames_shape": list(rec["frames_uint8"].shape), "crop_start": template["crop_start"],
                 "generator": "torch.Generator('cpu').manual_seed(seed)"})
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    save_file({k: np.ascontiguousarray(v) for k, v in rec.items()}, os.path.join(out_dir, f"{name}.safetensors"))
    print(f"{name}: {len(rec)} tensors, frames {rec['frames_uint8'].shape}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.reference_cases")
    p.add_argument("--src", required=True)
    p.add_argument("--template", required=True, help="framepack_prompt_template.json of the tokenizer")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from diffusers import HunyuanVideoFramepackPipeline

    os.makedirs(a.out, exist_ok=True)
    pipe = HunyuanVideoFramepackPipeline.from_pretrained(a.src, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    template = json.load(open(a.template, encoding="utf-8"))
    with torch.no_grad():
        for case in CASES:
            run_case(pipe, case, template, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
