"""python3 -m framefarm_export.lllyasviel_cases --framepack FRAMEPACK --tiny TINY_PIPELINE --inputs CASES --out DIR [--magcache MAGCACHE]

Ground truth for two framefarm features that diffusers' HunyuanVideoFramepackPipeline does not
have, in the reference's form (<name>.json, images, <name>.safetensors of every intermediate):

  * --sampler unipc ("sampler": "unipc" cases): sampled by lllyasviel's own files, imported from a
    checkout of lllyasviel/FramePack (FRAMEPACK, never copied into framefarm):
    diffusers_helper/pipelines/k_diffusion_hunyuan.py sample_hunyuan (flux time shift, UniPC from
    k_diffusion/uni_pc_fm.py, fm_wrapper's CFG and rescale) and soft_append_bcthw, with the section
    loop, generator use and frame conversion of demo_gradio.py / demo_gradio_f1.py written out
    below line for line (the demos cannot be imported: they start a gradio app and download models).
  * --cache teacache ("cache": "teacache" cases): lllyasviel's own transformer class
    (diffusers_helper/models/hunyuan_video_packed.py HunyuanVideoTransformer3DModelPacked, whose
    forward holds the TeaCache) with the tiny transformer's weights (its keys are the same), so the
    cache's decisions and reused residuals are his code's; initialize_teacache(enable_teacache=True,
    num_steps=steps, rel_l1_thresh=cache_threshold) before each section as the demos do. Each
    section's `section<k>.teacache_computed` records, per transformer call, 1 if the blocks ran and
    0 if the cached residual was reused. Adapted to the tiny model, visibly: its clean-latent
    embedder's convolutions take the VAE's 4 channels (the class hard-codes 16), torch 1.13's
    LayerNorm gets the attribute the class's patched forward reads, and einops' one rearrange in
    the forward is done with reshape/permute when einops is missing.
  * --cache magcache ("cache": "magcache" cases): Zehong-Ma/MagCache's MagCache4FramePack, the
    cache FramePack-Studio runs by default, from a checkout of it (MAGCACHE, never copied into
    framefarm): its demo's nearest_interp, initialize_magcache and magcache_framepack_forward are
    taken from MagCache4FramePack/magcache_demo_gradio.py's source (the demo cannot be imported:
    it starts a gradio app and loads the real models), run in the namespace of lllyasviel's
    packed-transformer module and bound to the packed transformer above as the demo binds them to
    its class; initialize_magcache(enable_magcache=True, num_steps=steps,
    magcache_thresh=cache_threshold, K=magcache_k, retention_ratio=magcache_retention) before each
    section as the demo does. `section<k>.magcache_computed` as TeaCache's.
  * prompts that change over time (timed or per-section prompts, blended): diffusers'
    HunyuanVideoFramepackPipeline section loop written out below, with each section's text
    embeddings replaced as framefarm's README specifies; the FlowMatch Euler sampler is diffusers'
    own FlowMatchEulerDiscreteScheduler. --selfcheck first reruns the four public reference cases
    through this loop and requires their latents and frames, proving the loop is diffusers'.
  * keyframes ("keyframes" cases): FramePack-eichi's section keyframe images
    (git-ai-code/FramePack-eichi webui/endframe_ichi.py, worker(): section_latents and
    current_latent), patched into the loops above exactly as eichi patches lllyasviel's demo loop
    (written out below: eichi's worker cannot be imported, it is one function of a gradio app):
    each keyframe image is VAE-encoded after the start (and end) image, in eichi's order, ascending
    section number; section i_section (generation order) takes as clean_latents_pre, the context
    slot that otherwise holds the start image's latent, the keyframe of the smallest section number
    >= i_section, else the start image's latent; the last section still prefixes the start image's
    latent. eichi numbers sections, framefarm times them: a keyframe at `seconds` is video-time
    section j = floor(seconds * fps / (window * 4)) (framefarm's rule, as for timed prompts), eichi's
    section number n - 1 - j. With an end image, the end image's latent is the first generated
    section's 1x history as diffusers does (eichi also writes it into its history tensor, where
    later sections' 4x context sees it; framefarm keeps diffusers' end image).

The models are the tiny pipeline's diffusers transformer and VAE (TINY_PIPELINE, e.g.
../shared/reference/tiny-framepack), built from their config and weights. Text and image encoder
outputs (and the preprocessed pixels) are taken from the public reference cases (CASES, e.g.
../shared/reference/cases): each case below names the cases whose prompts and images it uses, so
no text or image encoder (and no transformers package) is needed. What the demo hard-codes for the
real model is adapted to the tiny one, visibly: 16 latent channels become the VAE's 4 (the demo's
history zeros and sample_hunyuan's noise), and everything runs in float32 on the CPU (the demo
runs the transformer in bfloat16, which rounds its timestep and guidance too).

lllyasviel's demos draw the image latents' VAE sample from torch's unseeded global generator;
framefarm's rule is torch.manual_seed(seed + 1) right before it (the end image's sample follows
from the same generator). The demos have no end image; the "with an end image" case conditions
the first generated section on the end image's latents in place of its 1x history, as diffusers
does (and FramePack forks that add an end frame do).

Runs on torch 1.13 (Debian's python3-torch, CPU) with diffusers' source on PYTHONPATH, through
torch_compat.py, as well as on torch 2.x with the real packages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

from . import torch_compat

# The source cases of the inputs: prompt text -> (case, prefix); image -> case.
CASES = [
    {"name": "unipc_inverted_endframe_cfg", "sampler": "unipc", "sampling_type": "inverted_anti_drifting", "seed": 31337,
     "num_frames": 60, "steps": 4, "guidance_scale": 10.0, "true_cfg_scale": 2.0, "negative_prompt": "blurry",
     "latent_window_size": 5, "images_from": "inverted_endframe_2sec", "end_image": True,
     "prompt": "The man talks on the phone, then walks to the window."},
    {"name": "unipc_vanilla_bh2", "sampler": "unipc", "unipc_variant": "bh2", "sampling_type": "vanilla", "seed": 7,
     "num_frames": 100, "steps": 5, "guidance_scale": 10.0, "latent_window_size": 9, "images_from": "vanilla_3sec",
     "prompt": "A girl dances gracefully, with clear movements, full of charm."},
    {"name": "unipc_inverted_six_sections_rescale", "sampler": "unipc", "sampling_type": "inverted_anti_drifting", "seed": 2,
     "num_frames": 72, "steps": 3, "guidance_scale": 6.0, "true_cfg_scale": 3.0, "negative_prompt": "blurry", "cfg_rescale": 0.7,
     "latent_window_size": 3, "images_from": "inverted_3sec", "prompt": "A penguin dancing in the snow"},
    {"name": "teacache_unipc_vanilla", "sampler": "unipc", "cache": "teacache", "cache_threshold": 0.15, "sampling_type": "vanilla",
     "seed": 21, "num_frames": 30, "steps": 8, "guidance_scale": 10.0, "latent_window_size": 5, "images_from": "vanilla_3sec",
     "prompt": "A girl dances gracefully, with clear movements, full of charm."},
    {"name": "teacache_unipc_inverted_cfg", "sampler": "unipc", "cache": "teacache", "cache_threshold": 0.2,
     "sampling_type": "inverted_anti_drifting", "seed": 23, "num_frames": 40, "steps": 6, "guidance_scale": 10.0, "true_cfg_scale": 2.0,
     "negative_prompt": "blurry", "latent_window_size": 5, "images_from": "inverted_endframe_2sec", "end_image": True,
     "prompt": "The man talks on the phone, then walks to the window."},
    {"name": "magcache_unipc_vanilla", "sampler": "unipc", "cache": "magcache", "cache_threshold": 0.1, "magcache_k": 2,
     "magcache_retention": 0.25, "sampling_type": "vanilla", "seed": 31, "num_frames": 30, "steps": 8, "guidance_scale": 10.0,
     "latent_window_size": 5, "images_from": "vanilla_3sec", "prompt": "A girl dances gracefully, with clear movements, full of charm."},
    {"name": "magcache_unipc_inverted_cfg", "sampler": "unipc", "cache": "magcache", "cache_threshold": 0.15, "magcache_k": 3,
     "magcache_retention": 0.2, "sampling_type": "inverted_anti_drifting", "seed": 33, "num_frames": 40, "steps": 6,
     "guidance_scale": 10.0, "true_cfg_scale": 2.0, "negative_prompt": "blurry", "latent_window_size": 5,
     "images_from": "inverted_endframe_2sec", "end_image": True, "prompt": "The man talks on the phone, then walks to the window."},
    {"name": "timed_prompts_inverted_blend", "sampling_type": "inverted_anti_drifting", "seed": 11, "num_frames": 45, "steps": 3,
     "guidance_scale": 10.0, "latent_window_size": 3, "images_from": "inverted_3sec", "prompt_blend_sections": 1,
     "prompt": "[0s: A penguin dancing in the snow] [0.8s: A girl dances gracefully, with clear movements, full of charm.]"},
    {"name": "section_prompts_vanilla_cfg", "sampling_type": "vanilla", "seed": 12, "num_frames": 25, "steps": 3,
     "guidance_scale": 6.0, "true_cfg_scale": 2.5, "negative_prompt": "blurry", "latent_window_size": 3, "images_from": "vanilla_cfg_window5",
     "prompt": "", "section_prompts": ["A cat jumps onto the table.", "A penguin dancing in the snow", "A cat jumps onto the table."]},
    {"name": "timed_prompts_unipc_vanilla", "sampler": "unipc", "sampling_type": "vanilla", "seed": 13, "num_frames": 72, "steps": 3,
     "guidance_scale": 10.0, "latent_window_size": 3, "images_from": "vanilla_3sec", "prompt_blend_sections": 2,
     "prompt": "[0s: A cat jumps onto the table.] [0.5s-1.2s: The man talks on the phone, then walks to the window.] [1.2s: A penguin dancing in the snow]"},
    # Keyframes: FramePack-eichi's section keyframe images (keyframe sources: (case, 0 first / 1 end image)).
    {"name": "keyframes_unipc_inverted", "sampler": "unipc", "sampling_type": "inverted_anti_drifting", "seed": 41, "num_frames": 60,
     "steps": 3, "guidance_scale": 10.0, "latent_window_size": 3, "images_from": "inverted_3sec", "prompt": "A penguin dancing in the snow",
     "keyframes": [{"seconds": 0.5, "from": ("vanilla_3sec", 0)}, {"seconds": 1.3, "from": ("inverted_endframe_2sec", 1)}]},
    {"name": "keyframes_inverted_endframe_cfg", "sampling_type": "inverted_anti_drifting", "seed": 43, "num_frames": 36, "steps": 3,
     "guidance_scale": 10.0, "true_cfg_scale": 2.5, "negative_prompt": "blurry", "latent_window_size": 3,
     "images_from": "inverted_endframe_2sec", "end_image": True, "prompt": "The man talks on the phone, then walks to the window.",
     "keyframes": [{"seconds": 0.45, "from": ("vanilla_cfg_window5", 0)}, {"seconds": 0.85, "from": ("inverted_3sec", 0)}]},
]

PUBLIC = ["inverted_3sec", "vanilla_3sec", "inverted_endframe_2sec", "vanilla_cfg_window5"]


# --- models --------------------------------------------------------------------------------------
def load_models(tiny):
    torch_compat.install()

    def imports():
        from diffusers.models.transformers.transformer_hunyuan_video_framepack import HunyuanVideoFramepackTransformer3DModel
        from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import AutoencoderKLHunyuanVideo
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
        return HunyuanVideoFramepackTransformer3DModel, AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler

    T, V, S = torch_compat.import_with_stubs(imports)
    from safetensors.torch import load_file

    def build(cls, sub):
        m = cls.from_config(json.load(open(os.path.join(tiny, sub, "config.json"))))
        missing, unexpected = m.load_state_dict(load_file(os.path.join(tiny, sub, "diffusion_pytorch_model.safetensors")), strict=False)
        assert not missing and not unexpected, (sub, missing, unexpected)
        return m.eval().float()

    sched_cfg = json.load(open(os.path.join(tiny, "scheduler", "scheduler_config.json")))
    return build(T, "transformer"), build(V, "vae"), S, sched_cfg


def load_packed(tiny, framepack):
    """lllyasviel's HunyuanVideoTransformer3DModelPacked with the tiny transformer's config and weights."""
    import types

    for n in ("flash_sdp_enabled", "math_sdp_enabled", "mem_efficient_sdp_enabled", "cudnn_sdp_enabled"):
        if not hasattr(torch.backends.cuda, n):  # torch 1.13: the module asks at import
            setattr(torch.backends.cuda, n, lambda: False)
    sys.path.insert(0, os.path.abspath(framepack))

    def imports():
        import diffusers_helper.models.hunyuan_video_packed as hvp
        return hvp

    hvp = torch_compat.import_with_stubs(imports)
    if getattr(hvp.einops, "__file__", None) is None:  # torch_compat's stub: einops is not installed
        def rearrange(x, pattern, **d):
            if pattern != "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)":
                raise NotImplementedError(pattern)
            b, _, k = x.shape
            t, h, w, pt, ph, pw = d["t"], d["h"], d["w"], d["pt"], d["ph"], d["pw"]
            c = k // (pt * ph * pw)
            x = x.reshape(b, t, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
            return x.reshape(b, c, t * pt, h * ph, w * pw)

        hvp.einops = types.SimpleNamespace(rearrange=rearrange)
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(tiny, "transformer", "config.json")))
    kw = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "image_condition_type"}
    m = hvp.HunyuanVideoTransformer3DModelPacked(**kw)
    ce = m.clean_x_embedder
    for n in ("proj", "proj_2x", "proj_4x"):
        old = getattr(ce, n)
        setattr(ce, n, torch.nn.Conv3d(cfg["in_channels"], old.out_channels, kernel_size=old.kernel_size, stride=old.stride))
    for mod in m.modules():
        if isinstance(getattr(mod, "dim", None), torch.Size) and not hasattr(mod, "normalized_shape"):
            mod.normalized_shape = tuple(mod.dim)
    m.load_state_dict(load_file(os.path.join(tiny, "transformer", "diffusion_pytorch_model.safetensors")), strict=True)
    return m.eval().float()


def install_magcache(packed, magcache):
    """Zehong-Ma/MagCache's MagCache4FramePack on lllyasviel's packed transformer: the demo's
    nearest_interp, initialize_magcache and magcache_framepack_forward, compiled from its source in
    the packed module's namespace (torch, np, einops, get_cu_seqlens, Transformer2DModelOutput) and
    bound to this model as the demo's `transformer.__class__.forward = magcache_framepack_forward`."""
    import ast
    import types

    path = os.path.join(magcache, "MagCache4FramePack", "magcache_demo_gradio.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    wanted = ("nearest_interp", "initialize_magcache", "magcache_framepack_forward")
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if sorted(d.name for d in defs) != sorted(wanted):
        raise SystemExit(f"{path} lacks one of {wanted}")
    ns = dict(vars(sys.modules[type(packed).__module__]))
    ns.setdefault("np", np)
    exec(compile(ast.Module(body=defs, type_ignores=[]), path, "exec"), ns)
    packed.forward = types.MethodType(ns["magcache_framepack_forward"], packed)
    packed.initialize_magcache = types.MethodType(ns["initialize_magcache"], packed)
    return packed


class PackedRecorder(torch.nn.Module):
    """lllyasviel's packed transformer as sample_hunyuan calls it; reports each call's inputs under
    diffusers' names, its output and whether its blocks ran (TeaCache)."""

    def __init__(self, packed, on_call):
        super().__init__()
        self.inner, self.on_call, self.block_calls = packed, on_call, 0
        packed.transformer_blocks[0].register_forward_hook(lambda *a: setattr(self, "block_calls", self.block_calls + 1))

    def forward(self, hidden_states, timestep, return_dict=False, **kw):
        feeds = {"hidden_states": hidden_states, "timestep": timestep}
        for k, v in kw.items():
            k = DiffusersTransformerAsPacked.RENAME.get(k, k)
            feeds[k] = v[0] if k.startswith("indices_") and v.dim() == 2 else v
        before = self.block_calls
        out = self.inner(hidden_states, timestep, return_dict=False, **kw)
        self.on_call(feeds, out[0], self.block_calls > before)
        return out


def load_framepack(framepack):
    sys.path.insert(0, os.path.abspath(framepack))

    def imports():  # diffusers_helper.utils imports cv2, einops, torchvision: unused here, stubbed if missing
        from diffusers_helper.pipelines import k_diffusion_hunyuan as khy
        from diffusers_helper.utils import soft_append_bcthw
        return khy, soft_append_bcthw

    return torch_compat.import_with_stubs(imports)


# --- inputs taken from the public cases ----------------------------------------------------------
class Inputs:
    def __init__(self, cases_dir):
        from safetensors.torch import load_file
        self.dir = cases_dir
        self.tensors, self.texts = {}, {}
        for name in PUBLIC:
            meta = json.load(open(os.path.join(cases_dir, f"{name}.json")))
            t = load_file(os.path.join(cases_dir, f"{name}.safetensors"))
            self.tensors[name] = (meta, t)
            self.texts.setdefault(meta["prompt"], (t["prompt_embeds"], t["prompt_attention_mask"], t["pooled_prompt_embeds"]))
            if meta.get("negative_prompt") is not None:
                self.texts.setdefault(meta["negative_prompt"], (t["negative_prompt_embeds"], t["negative_prompt_attention_mask"], t["negative_pooled_prompt_embeds"]))

    def text(self, prompt):
        if prompt not in self.texts:
            raise SystemExit(f"no public reference case encodes the prompt {prompt!r}; use one of {sorted(self.texts)}")
        return self.texts[prompt]


# --- prompts that change over time (framefarm's README rule, written independently of the TS) -----
def parse_timed(prompt, duration):
    import re
    if not re.match(r"^\s*\[\s*\d", prompt):
        return None
    segs = []
    for m in re.finditer(r"\[\s*(\d+(?:\.\d+)?)\s*s\s*(?:-\s*(\d+(?:\.\d+)?)\s*s\s*)?:([^\]\[]*)\]", prompt):
        segs.append([float(m.group(1)), float(m.group(2)) if m.group(2) else None, m.group(3).strip()])
    for i, s in enumerate(segs):
        s[1] = segs[i + 1][0] if i + 1 < len(segs) else duration
    return segs


def section_prompts_by_time(case, n, w, tc=4, fps=30.0):
    if case.get("section_prompts"):
        return list(case["section_prompts"])
    segs = parse_timed(case["prompt"], case["num_frames"] / fps)
    if segs is None:
        return [case["prompt"]] * n
    out = []
    for j in range(n):
        mid = (j + 0.5) * w * tc / fps
        hit = [s for s in segs if s[0] <= mid < s[1]]
        out.append((hit[0] if hit else segs[-1])[2])
    return out


def blended(a, b, alpha):
    """(1 - alpha) * a + alpha * b with each one's padding zeroed and the masks' union."""
    (ea, ma, pa), (eb, mb, pb) = a, b
    za = ea * ma[..., None].to(ea.dtype)
    zb = eb * mb[..., None].to(eb.dtype)
    e = (1 - alpha) * za + alpha * zb
    m = ((ma != 0) | (mb != 0)).to(ma.dtype)
    p = (1 - alpha) * pa + alpha * pb
    return e, m, p


def conditioning_by_time(case, inputs, n, w):
    names = section_prompts_by_time(case, n, w)
    blend = case.get("prompt_blend_sections", 0)
    conds = []
    for j in range(n):
        cond = inputs.text(names[j])
        for c in range(j, max(0, j - blend), -1):
            if c >= 1 and names[c] != names[c - 1]:
                cond = blended(inputs.text(names[c - 1]), inputs.text(names[c]), (j - c + 1) / (blend + 1))
                break
        conds.append(cond)
    return names, conds


# --- FramePack-eichi's section keyframes ---------------------------------------------------------------
def keyframe_section_map(case, inputs, n, w, tc=4, fps=30.0):
    """eichi's section_map of images ({section number: pixels}, in its UI's order: ascending
    section number), from the case's timed keyframes; section numbers are generation order."""
    section_map = {}
    for i, kf in enumerate(case.get("keyframes") or []):
        j = int(math.floor(kf["seconds"] * fps / (w * tc) + 1e-9))
        assert 0 <= j < n, (case["name"], kf)
        src_case, which = kf["from"]
        section_map[n - 1 - j] = (i, inputs.tensors[src_case][1][f"image_pixels{which}"])
    return dict(sorted(section_map.items()))


def eichi_section_latents(section_map, encode, rec):
    """endframe_ichi.py: `for sec_num, (img, prm) in section_map.items(): if img is not None:
    section_latents[sec_num] = vae_encode(img_pt, vae)`, after the start and end images."""
    section_latents = {}
    for sec_num, (i, pixels) in section_map.items():
        section_latents[sec_num] = encode(pixels)
        rec[f"keyframe{i}.pixels"] = pixels
        rec[f"keyframe{i}.latents"] = section_latents[sec_num]
    return section_latents


def eichi_current_latent(section_latents, i_section, start_latent):
    """endframe_ichi.py: the section's clean_latents_pre."""
    if section_latents is not None and len(section_latents) > 0:
        valid_keys = [k for k in section_latents.keys() if k >= i_section]
        if valid_keys:
            use_key = min(valid_keys)
            return section_latents[use_key]
        return start_latent
    return start_latent


# --- diffusers' section loop with per-section embeddings ---------------------------------------------
def run_diffusers(case, models, inputs, rec, forced_conds=None):
    transformer, vae, Sched, sched_cfg = models
    meta, src = inputs.tensors[case["images_from"]]
    inverted = case["sampling_type"] == "inverted_anti_drifting"
    w = case.get("latent_window_size", 9)
    g = torch.Generator("cpu").manual_seed(case["seed"])
    sf = vae.config.scaling_factor
    image_latents = vae.encode(src["image_pixels0"][:, :, None]).latent_dist.sample(generator=g) * sf
    rec["image_latents"] = image_latents
    last_latents = None
    if case.get("end_image"):
        last_latents = vae.encode(src["image_pixels1"][:, :, None]).latent_dist.sample(generator=g) * sf
        rec["last_image_latents"] = last_latents
    image_embeds = src["image_embeds"]
    C, H, W = image_latents.shape[1], image_latents.shape[3], image_latents.shape[4]
    window_num_frames = (w - 1) * 4 + 1
    n = max(1, (case["num_frames"] + window_num_frames - 1) // window_num_frames)
    # Keyframes (eichi): their samples follow the start and end images' from the same generator.
    section_latents = eichi_section_latents(
        keyframe_section_map(case, inputs, n, w),
        lambda px: vae.encode(px[:, :, None]).latent_dist.sample(generator=g) * sf, rec)
    names, conds = conditioning_by_time(case, inputs, n, w) if forced_conds is None else (None, forced_conds)
    neg = inputs.text(case["negative_prompt"]) if case.get("true_cfg_scale", 1.0) > 1 and case.get("negative_prompt") is not None else None
    hs = [1, 2, 16] if inverted else [16, 2, 1]
    history = torch.zeros(1, C, sum(hs), H, W)
    total = 0
    if not inverted:
        history = torch.cat([history, image_latents], dim=2)
        total = 1
    guidance = torch.tensor([case["guidance_scale"]], dtype=torch.float32) * 1000.0
    video = None
    decodes = 0
    for k in range(n):
        j = n - 1 - k if inverted else k
        embeds, mask, pooled = conds[j]
        if inverted:
            paddings = list(reversed(range(n))) if n <= 4 else [3] + [2] * (n - 3) + [1, 0]
            is_last = k == n - 1
            pad = paddings[k] * w
            idx = torch.arange(0, sum([1, pad, w, *hs]))
            i_pre, _, i_lat, i_1x, i_2x, i_4x = idx.split([1, pad, w, *hs], dim=0)
            i_clean = torch.cat([i_pre, i_1x])
            l1x, l2x, l4x = history[:, :, :sum(hs)].split(hs, dim=2)
            if last_latents is not None and k == 0:
                l1x = last_latents
        else:
            idx = torch.arange(0, sum([1, *hs, w]))
            i_pre, i_4x, i_2x, i_1x, i_lat = idx.split([1, *hs, w], dim=0)
            i_clean = torch.cat([i_pre, i_1x])
            l4x, l2x, l1x = history[:, :, -sum(hs):].split(hs, dim=2)
        pre = eichi_current_latent(section_latents, k, image_latents) if inverted else image_latents
        clean = torch.cat([pre, l1x], dim=2)
        latents = torch.randn((1, C, (window_num_frames - 1) // 4 + 1, H, W), generator=g)
        rec[f"section{k}.noise"] = latents
        sched = Sched.from_config(sched_cfg)
        sigmas = np.linspace(1.0, 0.0, case["steps"] + 1)[:-1]
        mu = min(calculate_shift(latents.shape[2] * H * W / transformer.config.patch_size ** 2, sched_cfg), math.log(7.0))
        sched.set_timesteps(sigmas=sigmas, mu=mu)
        rec[f"section{k}.sigmas"], rec[f"section{k}.timesteps"] = sched.sigmas, sched.timesteps
        for i, t in enumerate(sched.timesteps):
            common = dict(hidden_states=latents, timestep=t.expand(1), image_embeds=image_embeds, indices_latents=i_lat,
                          guidance=guidance, latents_clean=clean, indices_latents_clean=i_clean, latents_history_2x=l2x,
                          indices_latents_history_2x=i_2x, latents_history_4x=l4x, indices_latents_history_4x=i_4x)
            feeds = dict(common, encoder_hidden_states=embeds, encoder_attention_mask=mask, pooled_projections=pooled)
            pred = transformer(**feeds, return_dict=False)[0]
            if i == 0:
                for name, v in feeds.items():
                    rec[f"section{k}.transformer_in.{name}"] = v
                rec[f"section{k}.step0.transformer_out"] = pred
            if neg is not None:
                npred = transformer(**common, encoder_hidden_states=neg[0], encoder_attention_mask=neg[1], pooled_projections=neg[2], return_dict=False)[0]
                pred = npred + case["true_cfg_scale"] * (pred - npred)
            latents = sched.step(pred.float(), t, latents, return_dict=False)[0]
        rec[f"section{k}.latents"] = latents
        if inverted:
            if is_last:
                latents = torch.cat([image_latents, latents], dim=2)
            total += latents.shape[2]
            history = torch.cat([latents, history], dim=2)
            real = history[:, :, :total]
            sl = slice(0, 2 * w + 1 if is_last else 2 * w)
        else:
            total += latents.shape[2]
            history = torch.cat([history, latents], dim=2)
            real = history[:, :, -total:]
            sl = slice(-2 * w, None)
        z = (real if video is None else real[:, :, sl]) / sf
        out = vae.decode(z, return_dict=False)[0]
        rec[f"decode{decodes}.in"] = z
        if decodes < 2:
            rec[f"decode{decodes}.out"] = out.half()
        decodes += 1
        if video is None:
            video = out
        else:
            video = soft_append(out, video, window_num_frames) if inverted else soft_append(video, out, window_num_frames)
    frames = video.shape[2]
    frames = (frames - 1) // 4 * 4 + 1
    video = video[:, :, :frames]
    # VaeImageProcessor.postprocess(output_type="np"), then (x * 255).round() as the public cases.
    x = (video * 0.5 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).float().numpy()
    rec["frames_uint8"] = torch.from_numpy((x * 255).round().astype(np.uint8))
    return names


def calculate_shift(seq, cfg):
    base_seq, max_seq = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_seq - base_seq)
    return seq * m + (base_shift - m * base_seq)


def soft_append(history, current, overlap):
    weights = torch.linspace(1, 0, overlap, dtype=history.dtype).view(1, 1, -1, 1, 1)
    blended_ = weights * history[:, :, -overlap:] + (1 - weights) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended_, current[:, :, overlap:]], dim=2).to(history)


# --- lllyasviel's demo --------------------------------------------------------------------------------
class DiffusersTransformerAsPacked(torch.nn.Module):
    """The tiny diffusers transformer under the keyword names FramePack's own transformer takes."""

    RENAME = {"image_embeddings": "image_embeds", "latent_indices": "indices_latents", "clean_latents": "latents_clean",
              "clean_latent_indices": "indices_latents_clean", "clean_latents_2x": "latents_history_2x",
              "clean_latent_2x_indices": "indices_latents_history_2x", "clean_latents_4x": "latents_history_4x",
              "clean_latent_4x_indices": "indices_latents_history_4x"}

    def __init__(self, transformer, on_call):
        super().__init__()
        self.inner, self.on_call = transformer, on_call

    def forward(self, hidden_states, timestep, return_dict=False, **kw):
        feeds = {"hidden_states": hidden_states, "timestep": timestep}
        for k, v in kw.items():
            k = self.RENAME.get(k, k)
            # The demo passes indices as [1, n] (unsqueeze(0)); diffusers' pipeline as [n].
            feeds[k] = v[0] if k.startswith("indices_") and v.dim() == 2 else v
        out = self.inner(**feeds, return_dict=False)
        self.on_call(feeds, out[0])
        return out


def run_demo(case, models, fp, inputs, rec):
    transformer, vae, _, _ = models
    khy, soft_append_bcthw = fp[:2]
    meta, src = inputs.tensors[case["images_from"]]
    inverted = case["sampling_type"] == "inverted_anti_drifting"
    latent_window_size = case.get("latent_window_size", 9)
    seed, steps, cfg = case["seed"], case["steps"], case.get("true_cfg_scale", 1.0)
    gs, rs = case["guidance_scale"], case.get("cfg_rescale", 0.0)
    total_second_length = case["num_frames"] / 30
    total_latent_sections = (total_second_length * 30) / (latent_window_size * 4)
    total_latent_sections = int(max(round(total_latent_sections), 1))
    sf = vae.config.scaling_factor
    C = vae.config.latent_channels  # the demo's 16 on the real model

    # vae_encode (diffusers_helper/hunyuan.py): latent_dist.sample() from the global generator,
    # seeded by framefarm's rule right before.
    torch.manual_seed((seed + 1) % 2 ** 64)
    start_latent = vae.encode(src["image_pixels0"][:, :, None]).latent_dist.sample() * sf
    rec["image_latents"] = start_latent
    end_latent = None
    if case.get("end_image"):
        end_latent = vae.encode(src["image_pixels1"][:, :, None]).latent_dist.sample() * sf
        rec["last_image_latents"] = end_latent
    # endframe_ichi.py: the section keyframes' vae_encode right after the start and end images'.
    section_latents = eichi_section_latents(
        keyframe_section_map(case, inputs, total_latent_sections, latent_window_size),
        lambda px: vae.encode(px[:, :, None]).latent_dist.sample() * sf, rec)
    image_encoder_last_hidden_state = src["image_embeds"]
    height, width = src["image_pixels0"].shape[2], src["image_pixels0"].shape[3]
    names, conds = conditioning_by_time(case, inputs, total_latent_sections, latent_window_size)
    if cfg == 1:
        llama_vec_n, llama_attention_mask_n, clip_l_pooler_n = torch.zeros_like(conds[0][0]), conds[0][1], torch.zeros_like(conds[0][2])
    else:
        llama_vec_n, llama_attention_mask_n, clip_l_pooler_n = inputs.text(case.get("negative_prompt") or "")

    state = {"section": -1, "first": False}
    computed = {}

    def on_call(feeds, out, ran=True):
        computed.setdefault(state["section"], []).append(1.0 if ran else 0.0)
        if state["first"]:
            state["first"] = False
            for name, v in feeds.items():
                rec[f"section{state['section']}.transformer_in.{name}"] = v
            rec[f"section{state['section']}.step0.transformer_out"] = out

    cache = case.get("cache")
    teacache, magcache = cache == "teacache", cache == "magcache"
    packed = fp[2]() if cache in ("teacache", "magcache") else None
    if magcache:
        install_magcache(packed, fp[3])
    model = PackedRecorder(packed, on_call) if packed is not None else DiffusersTransformerAsPacked(transformer, on_call)

    class TorchWithTinyChannels:
        """sample_hunyuan draws torch.randn((B, 16, T, H, W)); the tiny model has C channels."""

        def __getattr__(self, n):
            return getattr(torch, n)

        def randn(self, shape, generator=None, device=None, **kw):
            t = torch.randn((shape[0], C) + tuple(shape[2:]), generator=generator, device=device, **kw)
            rec[f"section{state['section']}.noise"] = t
            return t

    orig_sample_unipc, orig_torch = khy.sample_unipc, khy.torch

    def sample_unipc(model_fn, noise, sigmas, extra_args=None, callback=None, disable=False):
        rec[f"section{state['section']}.sigmas"] = sigmas
        rec[f"section{state['section']}.timesteps"] = (sigmas * 1000.0)[:-1]
        return orig_sample_unipc(model_fn, noise, sigmas, extra_args=extra_args, callback=callback, disable=True, variant=case.get("unipc_variant", "bh1"))

    khy.sample_unipc, khy.torch = sample_unipc, TorchWithTinyChannels()
    try:
        rnd = torch.Generator("cpu").manual_seed(seed)
        num_frames = latent_window_size * 4 - 3
        history_pixels = None
        decodes = 0

        def decode(latents):
            nonlocal decodes
            z = latents / sf  # vae_decode
            out = vae.decode(z).sample
            rec[f"decode{decodes}.in"] = z
            if decodes < 2:
                rec[f"decode{decodes}.out"] = out.half()
            decodes += 1
            return out

        def sample(section, clean_latents, clean_latent_indices, latent_indices, clean_latents_2x, clean_latent_2x_indices, clean_latents_4x, clean_latent_4x_indices):
            state["section"], state["first"] = section, True
            if teacache:  # demo_gradio.py: once per section, before sample_hunyuan
                packed.initialize_teacache(enable_teacache=True, num_steps=steps, rel_l1_thresh=case["cache_threshold"])
            if magcache:  # magcache_demo_gradio.py: once per section, before sample_hunyuan
                packed.initialize_magcache(enable_magcache=True, num_steps=steps, magcache_thresh=case["cache_threshold"],
                                           K=case["magcache_k"], retention_ratio=case["magcache_retention"])
            j = total_latent_sections - 1 - section if inverted else section
            llama_vec, llama_attention_mask, clip_l_pooler = conds[j]
            out = khy.sample_hunyuan(
                transformer=model, sampler="unipc", width=width, height=height, frames=num_frames, real_guidance_scale=cfg,
                distilled_guidance_scale=gs, guidance_rescale=rs, num_inference_steps=steps, generator=rnd,
                prompt_embeds=llama_vec, prompt_embeds_mask=llama_attention_mask, prompt_poolers=clip_l_pooler,
                negative_prompt_embeds=llama_vec_n, negative_prompt_embeds_mask=llama_attention_mask_n, negative_prompt_poolers=clip_l_pooler_n,
                device=torch.device("cpu"), dtype=torch.float32, image_embeddings=image_encoder_last_hidden_state,
                latent_indices=latent_indices, clean_latents=clean_latents, clean_latent_indices=clean_latent_indices,
                clean_latents_2x=clean_latents_2x, clean_latent_2x_indices=clean_latent_2x_indices,
                clean_latents_4x=clean_latents_4x, clean_latent_4x_indices=clean_latent_4x_indices,
            )
            rec[f"section{section}.latents"] = out
            if packed is not None:
                rec[f"section{section}.{cache}_computed"] = torch.tensor(computed[section], dtype=torch.float32)
                print(f"  section {section}: blocks ran on calls {computed[section]}", flush=True)
            return out

        if inverted:  # demo_gradio.py
            history_latents = torch.zeros(size=(1, C, 1 + 2 + 16, height // 8, width // 8), dtype=torch.float32)
            total_generated_latent_frames = 0
            latent_paddings = reversed(range(total_latent_sections))
            if total_latent_sections > 4:
                latent_paddings = [3] + [2] * (total_latent_sections - 3) + [1, 0]
            for section, latent_padding in enumerate(latent_paddings):
                is_last_section = latent_padding == 0
                latent_padding_size = latent_padding * latent_window_size
                indices = torch.arange(0, sum([1, latent_padding_size, latent_window_size, 1, 2, 16])).unsqueeze(0)
                clean_latent_indices_pre, blank_indices, latent_indices, clean_latent_indices_post, clean_latent_2x_indices, clean_latent_4x_indices = indices.split([1, latent_padding_size, latent_window_size, 1, 2, 16], dim=1)
                clean_latent_indices = torch.cat([clean_latent_indices_pre, clean_latent_indices_post], dim=1)
                current_latent = eichi_current_latent(section_latents, section, start_latent)  # eichi; start_latent without keyframes
                clean_latents_pre = current_latent.to(history_latents)
                clean_latents_post, clean_latents_2x, clean_latents_4x = history_latents[:, :, :1 + 2 + 16, :, :].split([1, 2, 16], dim=2)
                if end_latent is not None and section == 0:  # the end frame (not in the demo; as diffusers)
                    clean_latents_post = end_latent.to(history_latents)
                clean_latents = torch.cat([clean_latents_pre, clean_latents_post], dim=2)
                generated_latents = sample(section, clean_latents, clean_latent_indices, latent_indices, clean_latents_2x, clean_latent_2x_indices, clean_latents_4x, clean_latent_4x_indices)
                if is_last_section:
                    generated_latents = torch.cat([start_latent.to(generated_latents), generated_latents], dim=2)
                total_generated_latent_frames += int(generated_latents.shape[2])
                history_latents = torch.cat([generated_latents.to(history_latents), history_latents], dim=2)
                real_history_latents = history_latents[:, :, :total_generated_latent_frames, :, :]
                if history_pixels is None:
                    history_pixels = decode(real_history_latents).cpu()
                else:
                    section_latent_frames = (latent_window_size * 2 + 1) if is_last_section else (latent_window_size * 2)
                    overlapped_frames = latent_window_size * 4 - 3
                    current_pixels = decode(real_history_latents[:, :, :section_latent_frames]).cpu()
                    history_pixels = soft_append_bcthw(current_pixels, history_pixels, overlapped_frames)
                if is_last_section:
                    break
        else:  # demo_gradio_f1.py
            history_latents = torch.zeros(size=(1, C, 16 + 2 + 1, height // 8, width // 8), dtype=torch.float32)
            history_latents = torch.cat([history_latents, start_latent.to(history_latents)], dim=2)
            total_generated_latent_frames = 1
            for section_index in range(total_latent_sections):
                indices = torch.arange(0, sum([1, 16, 2, 1, latent_window_size])).unsqueeze(0)
                clean_latent_indices_start, clean_latent_4x_indices, clean_latent_2x_indices, clean_latent_1x_indices, latent_indices = indices.split([1, 16, 2, 1, latent_window_size], dim=1)
                clean_latent_indices = torch.cat([clean_latent_indices_start, clean_latent_1x_indices], dim=1)
                clean_latents_4x, clean_latents_2x, clean_latents_1x = history_latents[:, :, -sum([16, 2, 1]):, :, :].split([16, 2, 1], dim=2)
                clean_latents = torch.cat([start_latent.to(history_latents), clean_latents_1x], dim=2)
                generated_latents = sample(section_index, clean_latents, clean_latent_indices, latent_indices, clean_latents_2x, clean_latent_2x_indices, clean_latents_4x, clean_latent_4x_indices)
                total_generated_latent_frames += int(generated_latents.shape[2])
                history_latents = torch.cat([history_latents, generated_latents.to(history_latents)], dim=2)
                real_history_latents = history_latents[:, :, -total_generated_latent_frames:, :, :]
                if history_pixels is None:
                    history_pixels = decode(real_history_latents).cpu()
                else:
                    section_latent_frames = latent_window_size * 2
                    overlapped_frames = latent_window_size * 4 - 3
                    current_pixels = decode(real_history_latents[:, :, -section_latent_frames:]).cpu()
                    history_pixels = soft_append_bcthw(history_pixels, current_pixels, overlapped_frames)
    finally:
        khy.sample_unipc, khy.torch = orig_sample_unipc, orig_torch
    # save_bcthw_as_mp4's frames (b = 1): clamp, * 127.5 + 127.5, to uint8, 'c t h w -> t h w c'.
    x = torch.clamp(history_pixels.float(), -1., 1.) * 127.5 + 127.5
    rec["frames_uint8"] = x.detach().cpu().to(torch.uint8)[0].permute(1, 2, 3, 0).contiguous()
    return names


# --- writing cases -------------------------------------------------------------------------------------
def save_case(case, rec, inputs, out_dir, names):
    from safetensors.numpy import save_file
    name = case["name"]
    meta, src = inputs.tensors[case["images_from"]]
    first = f"{name}_first.png"
    shutil.copyfile(os.path.join(inputs.dir, meta["first_image"]), os.path.join(out_dir, first))
    last = None
    if case.get("end_image"):
        last = f"{name}_last.png"
        shutil.copyfile(os.path.join(inputs.dir, meta["last_image"]), os.path.join(out_dir, last))
    keyframes = None
    if case.get("keyframes"):
        keyframes = []
        for i, kf in enumerate(case["keyframes"]):
            src_case, which = kf["from"]
            kmeta = inputs.tensors[src_case][0]
            file = f"{name}_keyframe{i}.png"
            shutil.copyfile(os.path.join(inputs.dir, kmeta["first_image" if which == 0 else "last_image"]), os.path.join(out_dir, file))
            keyframes.append({"seconds": kf["seconds"], "image": file})
    rec = dict(rec)
    rec["image_pixels0"], rec["image_embeds"] = src["image_pixels0"], src["image_embeds"]
    if last is not None:
        rec["image_pixels1"] = src["image_pixels1"]
    first_prompt = names[0] if names else case["prompt"]
    rec["prompt_embeds"], rec["prompt_attention_mask"], rec["pooled_prompt_embeds"] = inputs.text(first_prompt)
    arrays = {}
    for k, v in rec.items():
        a = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
        arrays[k] = np.ascontiguousarray(a)
    j = {k: v for k, v in case.items() if k not in ("images_from", "end_image", "keyframes")}
    if keyframes is not None:
        j["keyframes"] = keyframes
    j.update({"height": int(src["image_pixels0"].shape[2]), "width": int(src["image_pixels0"].shape[3]),
              "first_image": first, "last_image": last, "frames_shape": list(arrays["frames_uint8"].shape),
              "reference": ("lllyasviel/FramePack sample_hunyuan + the demo's section loop with FramePack-eichi's section keyframes" if case.get("keyframes") and case.get("sampler") == "unipc"
                            else "diffusers' FramePack section loop with FramePack-eichi's section keyframes" if case.get("keyframes")
                            else "lllyasviel/FramePack sample_hunyuan, his packed transformer's TeaCache + the demo's section loop" if case.get("cache") == "teacache"
                            else "lllyasviel/FramePack sample_hunyuan, his packed transformer with Zehong-Ma/MagCache's MagCache4FramePack forward + the demo's section loop" if case.get("cache") == "magcache"
                            else "lllyasviel/FramePack sample_hunyuan + the demo's section loop" if case.get("sampler") == "unipc"
                            else "diffusers' FramePack section loop with per-section text embeddings")
              + f" (framefarm_export.lllyasviel_cases, torch {torch.__version__}); encoder outputs from {case['images_from']} and the public cases",
              "generator": "torch.Generator('cpu').manual_seed(seed)"})
    if case.get("sampler") == "unipc":
        j["image_generator"] = "torch.manual_seed(seed + 1), then the VAE's latent_dist.sample()"
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, indent=1, ensure_ascii=False)
    save_file(arrays, os.path.join(out_dir, f"{name}.safetensors"))
    print(f"{name}: {len(arrays)} tensors, frames {arrays['frames_uint8'].shape}", flush=True)


def selfcheck(models, inputs):
    """The diffusers loop above must reproduce the public cases (diffusers' own pipeline runs)."""
    for name in PUBLIC:
        meta, t = inputs.tensors[name]
        case = dict(meta, images_from=name, end_image=meta.get("last_image") is not None)
        conds = [inputs.text(meta["prompt"])] * 64
        rec = {}
        run_diffusers(case, models, inputs, rec, forced_conds=conds)
        worst = 0.0
        for k, v in rec.items():
            if k in t and k != "frames_uint8" and v.dtype.is_floating_point:
                worst = max(worst, float((v.float() - t[k].float()).norm() / (t[k].float().norm() + 1e-12)))
        d = (rec["frames_uint8"].int() - t["frames_uint8"].int()).abs()
        print(f"selfcheck {name}: worst relL2 {worst:.2e}, frames max|d| {int(d.max())} mean {float(d.float().mean()):.4f}", flush=True)
        assert worst < 1e-3 and int(d.max()) <= 2, name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.lllyasviel_cases")
    p.add_argument("--framepack", required=True, help="a checkout of lllyasviel/FramePack")
    p.add_argument("--tiny", required=True, help="the tiny pipeline folder (../shared/reference/tiny-framepack)")
    p.add_argument("--inputs", required=True, help="the public reference cases (../shared/reference/cases)")
    p.add_argument("--out", required=True)
    p.add_argument("--magcache", help="a checkout of Zehong-Ma/MagCache (needed by the magcache cases)")
    p.add_argument("--only", nargs="*", help="case names to run (default all)")
    p.add_argument("--selfcheck", action="store_true", help="first rerun the public cases through the diffusers loop")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    models = load_models(a.tiny)
    fp = load_framepack(a.framepack) + (lambda: load_packed(a.tiny, a.framepack), a.magcache)
    inputs = Inputs(a.inputs)
    os.makedirs(a.out, exist_ok=True)
    with torch.no_grad():
        if a.selfcheck:
            selfcheck(models, inputs)
        for case in CASES:
            if a.only and case["name"] not in a.only:
                continue
            rec = {}
            if case.get("cache") == "magcache" and a.magcache is None:
                raise SystemExit(f"{case['name']} needs --magcache (a checkout of Zehong-Ma/MagCache)")
            names = run_demo(case, models, fp, inputs, rec) if case.get("sampler") == "unipc" else run_diffusers(case, models, inputs, rec)
            save_case(case, rec, inputs, a.out, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
