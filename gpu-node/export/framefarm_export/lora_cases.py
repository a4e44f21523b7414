"""python -m framefarm_export.lora_cases --src PIPELINE --template TEMPLATE.json --out DIR

Reference cases with LoRAs: random rank-4 LoRAs for the tiny transformer, written in the formats
people share, loaded into diffusers' HunyuanVideoFramepackPipeline with load_lora_weights and
mixed with set_adapters(names, weights), then run as reference_cases runs a call (every
intermediate in the reference's form). The case JSON names its LoRA files and weights:
"loras": [{"file": "<case>_lora0.safetensors", "weight": 0.8}, ...].

- lora_diffusers_*: diffusers/PEFT keys ("transformer.<module>.lora_A.weight" / "lora_B.weight")
  as HunyuanVideoLoraLoaderMixin loads them: one LoRA on every Linear with diffusers' adapter
  metadata (lora_alpha 8 for rank 4, an alpha_pattern and a rank_pattern: PEFT's scaling
  lora_alpha / r per module), one on the attention projections without metadata (scale 1), and a
  third in HunyuanVideo's original naming (double_blocks.0.img_attn_qkv, single_blocks.0.linear1,
  txt_in.individual_token_refiner..., "diffusion_model." prefix: diffusers converts it with
  _convert_hunyuan_video_lora_to_diffusers).
- lora_kohya_*: musubi-tuner / kohya-ss naming ("lora_unet_<module with _>.lora_down.weight",
  "lora_up.weight", "alpha": scale alpha / rank, musubi's LoRAModule), once with FramePack's
  (diffusers') module names as musubi-tuner's FramePack training writes them, once with the
  original HunyuanVideo names as its HunyuanVideo training does. diffusers loads neither as such:
  this script converts them to diffusers' keys as a user would (lora_down -> lora_A, lora_up ->
  lora_B scaled by alpha / rank; the original names to "diffusion_model.<module>") and loads those,
  so the reference is diffusers running what musubi's LoRAModule computes.

diffusers' original-format conversion hard-codes the real model's hidden size (3072) where it
splits single_blocks.N.linear1 into to_q, to_k, to_v and proj_mlp; for the tiny model the script
runs that function with the tiny hidden size instead (the only change). Two original modules are
left out of the LoRAs because diffusers converts their lora_A as if it were lora_B (framefarm
does what the conversion means for the weight: lora_A shared, lora_B split or swapped):
txt_in.individual_token_refiner.blocks.N.self_attn_qkv (lora_A chunked in three: fails unless the
rank divides by 3, and is wrong when it does) and final_layer.adaLN_modulation.1 (lora_A's halves
swapped like the weight's).

Made with torch 2.13 (CPU), transformers 5.17, peft 0.21 and diffusers at commit 58eb52c0 (its
source on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os

import numpy as np
import torch

from .reference_cases import run_case

RANK = 4
IN_KEYS = ("timestep", "guidance", "image_embeds", "latents_clean", "latents_history_2x", "latents_history_4x",
           "indices_latents", "indices_latents_clean", "indices_latents_history_2x", "indices_latents_history_4x")


def _rand(gen, *shape, scale=0.15):
    return (torch.randn(*shape, generator=gen) * scale).float()


def linears(transformer):
    return {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


def peft_lora(gen, mods, names, rank=RANK, ranks=None):
    """PEFT keys for the named Linears: lora_A [r, in], lora_B [out, r]."""
    sd = {}
    for n in names:
        r = (ranks or {}).get(n, rank)
        sd[f"transformer.{n}.lora_A.weight"] = _rand(gen, r, mods[n].in_features)
        sd[f"transformer.{n}.lora_B.weight"] = _rand(gen, mods[n].out_features, r)
    return sd


# Original HunyuanVideo module names of one double block / single block / refiner block, and the
# model-level ones, with their (out, in) in units of the hidden size H (or the text/pooled dims).
def original_modules(hidden, text_dim, pooled_dim, mlp_ratio=4):
    h, m = hidden, hidden * mlp_ratio
    return {
        "double_blocks.0.img_mod.linear": (6 * h, h),
        "double_blocks.0.img_attn_qkv": (3 * h, h),
        "double_blocks.0.img_attn_proj": (h, h),
        "double_blocks.0.img_mlp.fc1": (m, h),
        "double_blocks.0.img_mlp.fc2": (h, m),
        "double_blocks.0.txt_mod.linear": (6 * h, h),
        "double_blocks.0.txt_attn_qkv": (3 * h, h),
        "double_blocks.0.txt_attn_proj": (h, h),
        "double_blocks.0.txt_mlp.fc1": (m, h),
        "double_blocks.0.txt_mlp.fc2": (h, m),
        "single_blocks.0.linear1": (3 * h + m, h),
        "single_blocks.0.linear2": (h, h + m),
        "single_blocks.0.modulation.linear": (3 * h, h),
        "txt_in.input_embedder": (h, text_dim),
        "txt_in.t_embedder.mlp.0": (h, 256),
        "txt_in.c_embedder.linear_1": (h, text_dim),
        "txt_in.individual_token_refiner.blocks.0.self_attn_proj": (h, h),
        "txt_in.individual_token_refiner.blocks.0.mlp.fc1": (m, h),
        "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1": (2 * h, h),
        "time_in.mlp.0": (h, 256),
        "vector_in.in_layer": (h, pooled_dim),
        "guidance_in.mlp.2": (h, h),
        "final_layer.linear": (16, h),
    }


def kohya_name(module):
    return "lora_unet_" + module.replace(".", "_")


def kohya_lora(gen, shapes, alphas):
    """musubi/kohya keys: lora_down [r, in], lora_up [out, r], alpha (absent: alpha = rank)."""
    sd = {}
    for n, (out_f, in_f) in shapes.items():
        k = kohya_name(n)
        sd[f"{k}.lora_down.weight"] = _rand(gen, RANK, in_f)
        sd[f"{k}.lora_up.weight"] = _rand(gen, out_f, RANK)
        if alphas.get(n) is not None:
            sd[f"{k}.alpha"] = torch.tensor(float(alphas[n]))
    return sd


def kohya_to_diffusers(sd, modules, prefix):
    """lora_down -> lora_A, lora_up * (alpha / rank) -> lora_B, under prefix.<module>: what
    musubi's LoRAModule adds (multiplier * alpha / dim * up @ down), in diffusers' keys."""
    by_name = {kohya_name(m): m for m in modules}
    out = {}
    for key, w in sd.items():
        lora_name, rest = key.split(".", 1)
        module = by_name[lora_name]
        if rest == "lora_down.weight":
            out[f"{prefix}.{module}.lora_A.weight"] = w
        elif rest == "lora_up.weight":
            rank = w.shape[1]
            alpha = sd.get(f"{lora_name}.alpha")
            scale = 1.0 if alpha is None else float(alpha) / rank
            out[f"{prefix}.{module}.lora_B.weight"] = w * scale
    return out


def patch_hidden_size(hidden):
    """diffusers' _convert_hunyuan_video_lora_to_diffusers with the tiny model's hidden size."""
    from diffusers.loaders import lora_conversion_utils as conv
    from diffusers.loaders import lora_pipeline

    src = inspect.getsource(conv._convert_hunyuan_video_lora_to_diffusers)
    assert "hidden_size = 3072" in src
    ns = dict(conv.__dict__)
    exec(src.replace("hidden_size = 3072", f"hidden_size = {hidden}"), ns)
    lora_pipeline._convert_hunyuan_video_lora_to_diffusers = ns["_convert_hunyuan_video_lora_to_diffusers"]


class TensorSiglipProcessor:
    """transformers' torchvision-backed SiglipImageProcessor on a float tensor, as the reference ran
    it: F.resize(size, BICUBIC, antialias=True) (torch's _upsample_bicubic2d_aa), then (x - mean) /
    std. Without torchvision, transformers 5 falls back to its PIL processor, which rounds the
    tensor to 8 bits first (8e-3 relative L2 in image_embeds); this stands in for it then."""

    def __init__(self, fe):
        self.size = (fe.size["height"], fe.size["width"])
        self.mean = torch.tensor(fe.image_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(fe.image_std).view(1, -1, 1, 1)

    def __call__(self, images, return_tensors="pt", do_rescale=False):
        from transformers import BatchFeature

        x = images if images.shape[-2:] == self.size else torch.nn.functional.interpolate(
            images, size=self.size, mode="bicubic", antialias=True, align_corners=False)
        return BatchFeature({"pixel_values": (x - self.mean) / self.std})


def save(sd, path, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata=metadata)


CASES = [
    {"name": "lora_diffusers_inverted_endframe_cfg", "sampling_type": "inverted_anti_drifting", "seed": 777,
     "num_frames": 40, "steps": 3, "prompt": "A paper boat drifts down a gutter stream.", "negative_prompt": "blurry",
     "true_cfg_scale": 2.5, "guidance_scale": 8.0, "height": 64, "width": 80, "img_seed": 21, "last_img_seed": 22,
     "latent_window_size": 5, "kind": "diffusers", "weights": [0.8, -0.6, 1.2]},
    {"name": "lora_kohya_vanilla", "sampling_type": "vanilla", "seed": 31337, "num_frames": 30, "steps": 3,
     "prompt": "A lantern swings in the wind.", "guidance_scale": 10.0, "height": 64, "width": 64, "img_seed": 23,
     "latent_window_size": 4, "kind": "kohya", "weights": [0.7, 1.5]},
]


def make_loras(case, transformer, gen, out_dir):
    """Writes the case's LoRA files; returns [(file, weight, diffusers state dict or path)]."""
    mods = linears(transformer)
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    originals = original_modules(hidden, cfg.text_embed_dim, cfg.pooled_projection_dim)
    name = case["name"]
    files = []
    if case["kind"] == "diffusers":
        everything = sorted(mods)
        sd0 = peft_lora(gen, mods, everything, ranks={"proj_out": 2})
        meta = {"r": RANK, "lora_alpha": 8, "target_modules": everything, "rank_pattern": {"^proj_out": 2},
                "alpha_pattern": {"attn.to_k": 2, "^proj_out": 1}, "use_dora": False, "lora_bias": False,
                "use_rslora": False}
        meta = {f"transformer.{k}": v for k, v in meta.items()}
        f0 = f"{name}_lora0.safetensors"
        save(sd0, os.path.join(out_dir, f0), {"format": "pt", "lora_adapter_metadata": json.dumps(meta, sort_keys=True)})
        attn = [n for n in sorted(mods) if ".attn." in n]
        sd1 = peft_lora(gen, mods, attn)
        f1 = f"{name}_lora1.safetensors"
        save(sd1, os.path.join(out_dir, f1), {"format": "pt"})
        sd2 = {}
        for n, (o, i) in originals.items():
            sd2[f"diffusion_model.{n}.lora_A.weight"] = _rand(gen, RANK, i)
            sd2[f"diffusion_model.{n}.lora_B.weight"] = _rand(gen, o, RANK)
        f2 = f"{name}_lora2.safetensors"
        save(sd2, os.path.join(out_dir, f2), {"format": "pt"})
        files = [(f0, os.path.join(out_dir, f0)), (f1, os.path.join(out_dir, f1)), (f2, os.path.join(out_dir, f2))]
    else:
        blocks = {n: (m.out_features, m.in_features) for n, m in mods.items()
                  if n.startswith(("transformer_blocks.", "single_transformer_blocks.")) and "norm" not in n}
        alphas = {n: (None if i % 5 == 0 else 2.0) for i, n in enumerate(sorted(blocks))}
        sd0 = kohya_lora(gen, blocks, alphas)
        f0 = f"{name}_lora0.safetensors"
        save(sd0, os.path.join(out_dir, f0), {"format": "pt"})
        orig = {n: s for n, s in originals.items() if n.startswith(("double_blocks.", "single_blocks."))}
        sd1 = kohya_lora(gen, orig, {n: 8.0 for n in orig})
        f1 = f"{name}_lora1.safetensors"
        save(sd1, os.path.join(out_dir, f1), {"format": "pt"})
        files = [(f0, kohya_to_diffusers(sd0, blocks, "transformer")),
                 (f1, kohya_to_diffusers(sd1, orig, "diffusion_model"))]
    return [(f, w, src) for (f, src), w in zip(files, case["weights"])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.lora_cases")
    p.add_argument("--src", required=True)
    p.add_argument("--template", required=True, help="framepack_prompt_template.json of the tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    a = p.parse_args(argv)
    from diffusers import HunyuanVideoFramepackPipeline

    os.makedirs(a.out, exist_ok=True)
    template = json.load(open(a.template, encoding="utf-8"))
    for case in CASES:
        if a.only and case["name"] not in a.only:
            continue
        pipe = HunyuanVideoFramepackPipeline.from_pretrained(a.src, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        try:
            import torchvision  # noqa: F401
        except Exception:
            pipe.feature_extractor = TensorSiglipProcessor(pipe.feature_extractor)
        cfg = pipe.transformer.config
        patch_hidden_size(cfg.num_attention_heads * cfg.attention_head_dim)
        gen = torch.Generator("cpu").manual_seed(int(case["seed"]) + 1000)
        loras = make_loras(case, pipe.transformer, gen, a.out)
        names = []
        for i, (_, _, src) in enumerate(loras):
            pipe.load_lora_weights(src, adapter_name=f"lora{i}")
            names.append(f"lora{i}")
        pipe.set_adapters(names, adapter_weights=[w for _, w, _ in loras])
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in pipe.transformer.modules() if isinstance(m, BaseTunerLayer)]
        per = {n: sum(1 for m in layers if n in m.lora_A) for n in names}
        scales = sorted({round(float(m.scaling[n]), 6) for m in layers for n in names if n in m.scaling})
        print(f"{case['name']}: LoRA layers per adapter {per}, scalings {scales}", flush=True)
        spec = {k: v for k, v in case.items() if k not in ("kind", "weights")}
        # Every transformer input of each section's first call, as the public cases hold them.
        inputs, calls = {}, [0]
        per_section = case["steps"] * (2 if case.get("true_cfg_scale", 1.0) > 1 and case.get("negative_prompt") else 1)
        forward = pipe.transformer.forward

        def recording_forward(*args, **kw):
            if calls[0] % per_section == 0:
                k = calls[0] // per_section
                for n in IN_KEYS:
                    if kw.get(n) is not None:
                        inputs[f"section{k}.transformer_in.{n}"] = kw[n].detach().float().numpy() if kw[n].is_floating_point() else kw[n].numpy()
            calls[0] += 1
            return forward(*args, **kw)

        pipe.transformer.forward = recording_forward
        with torch.no_grad():
            run_case(pipe, spec, template, a.out)
        pipe.transformer.forward = forward
        from safetensors.numpy import load_file, save_file

        tensors_path = os.path.join(a.out, f"{case['name']}.safetensors")
        tensors = load_file(tensors_path)
        tensors.update({k: np.ascontiguousarray(v) for k, v in inputs.items()})
        save_file(tensors, tensors_path)
        path = os.path.join(a.out, f"{case['name']}.json")
        meta = json.load(open(path, encoding="utf-8"))
        meta["loras"] = [{"file": f, "weight": w} for f, w, _ in loras]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
