"""python3 -m framefarm_export.video_cases --framepack FRAMEPACK --tiny TINY_PIPELINE --inputs CASES --out DIR [--ffmpeg FFMPEG]

Ground truth for extending a video (framefarm's `--video`): FramePack-Studio's "Video F1" (vanilla)
and "Video" (inverted, toward an end image) modes, after FramePack PR #491 (pftq's F1 video
extension), written out below with the tiny pipeline's diffusers transformer and VAE, in the
reference's form (<name>.json, the input video and end image, <name>.safetensors of every
intermediate). Studio's code is in colinurbs/FramePack-Studio (modules/generators/
video_base_generator.py, video_f1_generator.py, video_generator.py, modules/pipelines/worker.py);
the two context functions below follow its video_f1_prepare_clean_latents_and_indices and
video_prepare_clean_latents_and_indices line for line, with the adaptations framefarm's README
lists (and names again here):

  * frames: the input's last 4 * (L - 1) + 1 frames are encoded by ONE vae.encode call (diffusers'
    framewise encoding: 17-frame tiles every 12 frames), L = min(latents the video has, max(27, w));
    Studio encodes its last <= 108 frames (a multiple of 4) in batches of 16 through vae_encode. The
    last encoded frame is the video's last, so a decoded latent lines up with the input's frames;
  * the posterior sample: one draw for all L latents, from the job's generator before anything else
    (flow_match_euler), or from torch's global generator seeded seed + 1 (unipc), as framefarm's
    image modes draw the start image's;
  * a video with fewer than 16 + 2 + (N - 1) latents is padded with zeros before its start (the
    exported transformer's 2x and 4x history sizes are fixed; Studio shrinks them instead);
  * the join: the generated part starts where the input ends, cross-faded over (w - 1) * 4 + 1
    frames as soft_append joins sections: the section next to the input decodes the input's last w
    latents with its own (vanilla: the history's last 2w latents; inverted: prefixed to the last
    section's decode), and those frames are soft-appended to the input's frames (PR #491's
    commented-out `history_pixels = input_video_pixels`). Studio concatenates the input with the
    generated frames without a cross-fade;
  * the image conditioning: SigLIP of the first encoded frame (Studio's input_image_np), or with an
    end image, Studio's End Frame Influence at its default 1.0: the end image's SigLIP embedding.

The tiny transformer and VAE are built as lllyasviel_cases.py builds them; text and image encoder
outputs come from the public reference cases (no transformers package): each case's input video
holds, at its first encoded frame, a public case's start image (so SigLIP of that frame is that
case's image_embeds), or its end image is one (inverted). The video is written losslessly
(libx264rgb, qp 0) with FFMPEG (the ffmpeg framefarm's npm install provides), and read back to check
that its frames are exact, so any decoder gives these frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess

import numpy as np
import torch
from PIL import Image

from . import lllyasviel_cases as lc

STUDIO_MAX_CONTEXT_LATENTS = 27  # VideoBaseModelGenerator.min_real_frames_to_encode

CASES = [
    {"name": "video_extend_vanilla", "sampling_type": "vanilla", "seed": 41, "num_frames": 30, "steps": 3,
     "guidance_scale": 10.0, "latent_window_size": 5, "context_frames": 3, "input_frames": 50,
     "video_from": "vanilla_3sec", "prompt": "A girl dances gracefully, with clear movements, full of charm."},
    {"name": "video_extend_unipc_inverted_endframe", "sampler": "unipc", "sampling_type": "inverted_anti_drifting",
     "seed": 43, "num_frames": 48, "steps": 4, "guidance_scale": 10.0, "true_cfg_scale": 2.0, "negative_prompt": "blurry",
     "latent_window_size": 4, "context_frames": 5, "input_frames": 100, "video_from": "inverted_endframe_2sec",
     "end_image_from": "inverted_3sec", "prompt": "The man talks on the phone, then walks to the window."},
]


# --- the input video ---------------------------------------------------------------------------------
def video_latent_frames(frames, window, tc=4):
    """L: the latents the video has ((T - 1) // 4 + 1), at most Studio's 27 or the window."""
    return min((frames - 1) // tc + 1, max(STUDIO_MAX_CONTEXT_LATENTS, window))


def make_frames(image, count, first_encoded):
    """uint8 [T, H, W, 3]: the image drifting sideways and dimming, exactly itself at first_encoded."""
    frames = []
    for t in range(count):
        s = t - first_encoded
        f = np.roll(image, s, axis=1).astype(np.float32) * (1.0 - 0.004 * abs(s)) + 2.0 * s
        frames.append(np.clip(np.round(f), 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    assert (frames[first_encoded] == image).all()
    return frames


def write_lossless(frames, path, ffmpeg, fps=30):
    t, h, w, _ = frames.shape
    cmd = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{w}x{h}",
           "-framerate", str(fps), "-i", "-", "-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24", path]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    back = subprocess.run([ffmpeg, "-v", "error", "-i", path, "-vsync", "passthrough", "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    got = np.frombuffer(back, dtype=np.uint8).reshape(-1, h, w, 3)
    assert got.shape == frames.shape and (got == frames).all(), f"{path} does not read back exactly"


def to_pixels(frames):
    """uint8 [T, H, W, 3] -> [1, 3, T, H, W] in [-1, 1]: diffusers' VaeImageProcessor, 2 * (x / 255) - 1."""
    x = torch.from_numpy(frames).float() / 255.0
    return (2.0 * x - 1.0).permute(3, 0, 1, 2)[None]


# --- Studio's context functions (with zero padding before the video's start) ----------------------------
def studio_f1_context(latent_window_size, video_latents, history_latents, num_cleaned_frames):
    """Studio's VideoF1ModelGenerator.video_f1_prepare_clean_latents_and_indices (history_latents
    here begins with zeros, so the fallbacks for <= 1 s videos are never taken)."""
    num_clean_frames = num_cleaned_frames if num_cleaned_frames is not None else 5
    start_latent = video_latents[:, :, -1:]
    available_frames = history_latents.shape[2]
    max_pixel_frames = min(latent_window_size * 4 - 3, available_frames * 4)
    adjusted_latent_frames = max(1, (max_pixel_frames + 3) // 4)
    effective_clean_frames = max(0, num_clean_frames - 1) if num_clean_frames > 1 else 0
    effective_clean_frames = min(effective_clean_frames, available_frames - 2) if available_frames > 2 else 0
    num_2x_frames = min(2, max(1, available_frames - effective_clean_frames - 1)) if available_frames > effective_clean_frames + 1 else 0
    num_4x_frames = min(16, max(1, available_frames - effective_clean_frames - num_2x_frames)) if available_frames > effective_clean_frames + num_2x_frames else 0
    total_context_frames = num_4x_frames + num_2x_frames + effective_clean_frames
    total_context_frames = min(total_context_frames, available_frames)
    assert (num_4x_frames, num_2x_frames, adjusted_latent_frames) == (16, 2, latent_window_size)
    indices = torch.arange(0, sum([1, num_4x_frames, num_2x_frames, effective_clean_frames, adjusted_latent_frames]))
    i_start, i_4x, i_2x, i_1x, i_lat = indices.split([1, num_4x_frames, num_2x_frames, effective_clean_frames, adjusted_latent_frames])
    i_clean = torch.cat([i_start, i_1x])
    context_frames = history_latents[:, :, -total_context_frames:, :, :]
    l4x, l2x, l1x = context_frames.split([num_4x_frames, num_2x_frames, effective_clean_frames], dim=2)
    clean = torch.cat([start_latent.to(history_latents), l1x], dim=2)
    return i_clean, i_lat, i_2x, i_4x, clean, l2x, l4x


def studio_inverted_context(end_latent, latent_paddings, latent_padding, latent_padding_size, latent_window_size,
                            video_latents, history_latents, num_cleaned_frames):
    """Studio's VideoModelGenerator.video_prepare_clean_latents_and_indices; video_latents here
    begins with zeros (so its 2x and 4x context always has 2 and 16 frames)."""
    num_clean_frames = num_cleaned_frames if num_cleaned_frames is not None else 5
    end_of_input_video_latent = video_latents[:, :, -1:]
    is_start_of_video = latent_padding == 0
    is_end_of_video = latent_padding == latent_paddings[0]
    # Studio counts the video's latents on the section next to it, else its history_latents (the
    # video's and the generated ones); here the zero-padded video's, which always give 2 and 16.
    available_frames = video_latents.shape[2]
    effective_clean_frames = max(0, num_clean_frames - 1) if num_clean_frames > 1 else 1
    if is_start_of_video:
        effective_clean_frames = 1
    clean_latent_pre_frames = effective_clean_frames
    num_2x_frames = min(2, max(1, available_frames - clean_latent_pre_frames - 1)) if available_frames > clean_latent_pre_frames + 1 else 1
    num_4x_frames = min(16, max(1, available_frames - clean_latent_pre_frames - num_2x_frames)) if available_frames > clean_latent_pre_frames + num_2x_frames else 1
    assert (num_2x_frames, num_4x_frames) == (2, 16)
    total_context_frames = num_2x_frames + num_4x_frames
    post_frames = 1 if is_end_of_video and end_latent is not None else effective_clean_frames
    indices = torch.arange(0, clean_latent_pre_frames + latent_padding_size + latent_window_size + post_frames + num_2x_frames + num_4x_frames)
    i_pre, _, i_lat, i_post, i_2x, i_4x = indices.split(
        [clean_latent_pre_frames, latent_padding_size, latent_window_size, post_frames, num_2x_frames, num_4x_frames])
    i_clean = torch.cat([i_pre, i_post])
    # Studio reads these from the tail of its history_latents, which is the input video's latents.
    context_frames = video_latents[:, :, -(total_context_frames + clean_latent_pre_frames):-clean_latent_pre_frames, :, :]
    l4x, l2x = context_frames.split([num_4x_frames, num_2x_frames], dim=2)
    pre = video_latents[:, :, -min(effective_clean_frames, video_latents.shape[2]):]
    post = history_latents[:, :, :min(effective_clean_frames, history_latents.shape[2]), :, :]
    if is_end_of_video:
        post = torch.zeros_like(end_of_input_video_latent)
    if end_latent is not None and is_end_of_video:
        post = end_latent[:, :, :1]
    if pre.shape[2] < clean_latent_pre_frames:
        pre = pre.repeat(1, 1, math.ceil(clean_latent_pre_frames / pre.shape[2]), 1, 1)[:, :, :clean_latent_pre_frames]
    if post.shape[2] < post_frames:
        post = post.repeat(1, 1, math.ceil(post_frames / post.shape[2]), 1, 1)[:, :, :post_frames]
    return i_clean, i_lat, i_2x, i_4x, torch.cat([pre, post], dim=2), l2x, l4x


# --- one case ------------------------------------------------------------------------------------------
def run_case(case, models, fp, inputs, out_dir, ffmpeg):
    transformer, vae, Sched, sched_cfg = models
    khy = fp[0]
    name = case["name"]
    rec = {}
    unipc = case.get("sampler") == "unipc"
    inverted = case["sampling_type"] == "inverted_anti_drifting"
    w, N, seed, steps = case["latent_window_size"], case["context_frames"], case["seed"], case["steps"]
    e = N - 1
    sf = vae.config.scaling_factor
    C = vae.config.latent_channels

    # The input video: a public case's start image drifting; its first encoded frame is that image.
    src_meta, src = inputs.tensors[case["video_from"]]
    image = np.asarray(Image.open(os.path.join(inputs.dir, src_meta["first_image"])).convert("RGB"))
    T = case["input_frames"]
    L = video_latent_frames(T, w)
    F = 4 * (L - 1) + 1
    frames = make_frames(image, T, T - F)
    video_file = f"{name}_video.mp4"
    write_lossless(frames, os.path.join(out_dir, video_file), ffmpeg)
    input_pixels = to_pixels(frames)
    height, width = frames.shape[1], frames.shape[2]

    # Encoders: the video's last F frames in one vae.encode (framewise: 17-frame tiles), one sample.
    g = torch.Generator("cpu").manual_seed(seed)
    if unipc:
        torch.manual_seed((seed + 1) % 2 ** 64)
    posterior = vae.encode(input_pixels[:, :, T - F:]).latent_dist
    video_latents = (posterior.sample() if unipc else posterior.sample(generator=g)) * sf
    assert video_latents.shape[2] == L
    rec["video_latents"] = video_latents
    end_latent = None
    end_file = None
    if case.get("end_image_from"):
        end_meta, end_src = inputs.tensors[case["end_image_from"]]
        end_file = f"{name}_last.png"
        shutil.copyfile(os.path.join(inputs.dir, end_meta["first_image"]), os.path.join(out_dir, end_file))
        rec["image_pixels1"], rec["siglip_pixel_values1"] = end_src["image_pixels0"], end_src["siglip_pixel_values0"]
        end_posterior = vae.encode(end_src["image_pixels0"][:, :, None]).latent_dist
        end_latent = (end_posterior.sample() if unipc else end_posterior.sample(generator=g)) * sf
        rec["last_image_latents"] = end_latent
        image_embeds = end_src["image_embeds"]  # Studio's End Frame Influence 1.0
    else:
        rec["siglip_pixel_values0"] = src["siglip_pixel_values0"]
        image_embeds = src["image_embeds"]
    rec["image_embeds"] = image_embeds

    prompt = inputs.text(case["prompt"])
    rec["prompt_embeds"], rec["prompt_attention_mask"], rec["pooled_prompt_embeds"] = prompt
    cfg = case.get("true_cfg_scale", 1.0)
    if unipc:
        true_cfg = cfg != 1
        negative = inputs.text(case.get("negative_prompt") or "") if true_cfg else None
    else:
        true_cfg = cfg > 1 and case.get("negative_prompt") is not None
        negative = inputs.text(case["negative_prompt"]) if true_cfg else None
    if negative is not None:
        rec["negative_prompt_embeds"], rec["negative_prompt_attention_mask"], rec["negative_pooled_prompt_embeds"] = negative

    # Sections: the sampler's count (diffusers' ceil, or the demo's round, half to even).
    wf = (w - 1) * 4 + 1
    n = max(1, round(case["num_frames"] / (w * 4))) if unipc else max(1, -(-case["num_frames"] // wf))
    zeros = torch.zeros(1, C, e + 18, height // 8, width // 8)
    padded_video = torch.cat([zeros, video_latents], dim=2)
    state = {"section": -1, "first": False}

    def on_call(feeds, out, ran=True):
        if state["first"]:
            state["first"] = False
            for key, v in feeds.items():
                rec[f"section{state['section']}.transformer_in.{key}"] = v
            rec[f"section{state['section']}.step0.transformer_out"] = out

    def sample(k, i_clean, i_lat, i_2x, i_4x, clean, l2x, l4x):
        state["section"], state["first"] = k, True
        if unipc:
            return sample_unipc(k, i_clean, i_lat, i_2x, i_4x, clean, l2x, l4x)
        latents = torch.randn((1, C, w, height // 8, width // 8), generator=g)
        rec[f"section{k}.noise"] = latents
        sched = Sched.from_config(sched_cfg)
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        mu = min(lc.calculate_shift(w * (height // 8) * (width // 8) / transformer.config.patch_size ** 2, sched_cfg), math.log(7.0))
        sched.set_timesteps(sigmas=sigmas, mu=mu)
        rec[f"section{k}.sigmas"], rec[f"section{k}.timesteps"] = sched.sigmas, sched.timesteps
        guidance = torch.tensor([case["guidance_scale"]], dtype=torch.float32) * 1000.0
        for i, t in enumerate(sched.timesteps):
            common = dict(hidden_states=latents, timestep=t.expand(1), image_embeds=image_embeds, indices_latents=i_lat,
                          guidance=guidance, latents_clean=clean, indices_latents_clean=i_clean, latents_history_2x=l2x,
                          indices_latents_history_2x=i_2x, latents_history_4x=l4x, indices_latents_history_4x=i_4x)
            feeds = dict(common, encoder_hidden_states=prompt[0], encoder_attention_mask=prompt[1], pooled_projections=prompt[2])
            pred = transformer(**feeds, return_dict=False)[0]
            on_call(feeds, pred)
            if negative is not None:
                npred = transformer(**common, encoder_hidden_states=negative[0], encoder_attention_mask=negative[1],
                                    pooled_projections=negative[2], return_dict=False)[0]
                pred = npred + cfg * (pred - npred)
            latents = sched.step(pred.float(), t, latents, return_dict=False)[0]
        return latents

    rnd = torch.Generator("cpu").manual_seed(seed)
    model = lc.DiffusersTransformerAsPacked(transformer, on_call)

    class TorchWithTinyChannels:
        """sample_hunyuan draws torch.randn((B, 16, T, H, W)); the tiny model has C channels."""

        def __getattr__(self, attr):
            return getattr(torch, attr)

        def randn(self, shape, generator=None, device=None, **kw):
            t = torch.randn((shape[0], C) + tuple(shape[2:]), generator=generator, device=device, **kw)
            rec[f"section{state['section']}.noise"] = t
            return t

    def sample_unipc(k, i_clean, i_lat, i_2x, i_4x, clean, l2x, l4x):
        orig_sample_unipc, orig_torch = khy.sample_unipc, khy.torch

        def recording_unipc(model_fn, noise, sigmas, extra_args=None, callback=None, disable=False):
            rec[f"section{k}.sigmas"], rec[f"section{k}.timesteps"] = sigmas, (sigmas * 1000.0)[:-1]
            return orig_sample_unipc(model_fn, noise, sigmas, extra_args=extra_args, callback=callback, disable=True, variant="bh1")

        khy.sample_unipc, khy.torch = recording_unipc, TorchWithTinyChannels()
        try:
            if negative is None:
                neg = (torch.zeros_like(prompt[0]), prompt[1], torch.zeros_like(prompt[2]))
            else:
                neg = negative
            return khy.sample_hunyuan(
                transformer=model, sampler="unipc", width=width, height=height, frames=w * 4 - 3, real_guidance_scale=cfg,
                distilled_guidance_scale=case["guidance_scale"], guidance_rescale=0.0, num_inference_steps=steps, generator=rnd,
                prompt_embeds=prompt[0], prompt_embeds_mask=prompt[1], prompt_poolers=prompt[2],
                negative_prompt_embeds=neg[0], negative_prompt_embeds_mask=neg[1], negative_prompt_poolers=neg[2],
                device=torch.device("cpu"), dtype=torch.float32, image_embeddings=image_embeds,
                latent_indices=i_lat[None], clean_latents=clean, clean_latent_indices=i_clean[None],
                clean_latents_2x=l2x, clean_latent_2x_indices=i_2x[None], clean_latents_4x=l4x, clean_latent_4x_indices=i_4x[None])
        finally:
            khy.sample_unipc, khy.torch = orig_sample_unipc, orig_torch

    decodes = 0

    def decode(latents):
        nonlocal decodes
        z = latents / sf
        out = vae.decode(z).sample
        rec[f"decode{decodes}.in"] = z
        if decodes < 2:
            rec[f"decode{decodes}.out"] = out.half()
        decodes += 1
        return out

    overlap = w * 4 - 3
    if not inverted:
        # PR #491: history_latents starts as the video's latents and they count as real history;
        # history_pixels starts as the input's frames, so every section decodes 2w latents.
        history = torch.cat([zeros, video_latents], dim=2)
        total = L
        history_pixels = input_pixels
        for k in range(n):
            generated = sample(k, *studio_f1_context(w, video_latents, history, N))
            rec[f"section{k}.latents"] = generated
            total += generated.shape[2]
            history = torch.cat([history, generated], dim=2)
            real = history[:, :, -total:]
            history_pixels = lc.soft_append(history_pixels, decode(real[:, :, -2 * w:]), overlap)
    else:
        paddings = lc_paddings(n)
        history = video_latents  # Studio: history_latents = video_latents; generated ones go in front
        total = 0
        history_pixels = None
        for k, latent_padding in enumerate(paddings):
            ctx = studio_inverted_context(end_latent, paddings, latent_padding, latent_padding * w, w, padded_video, history, N)
            generated = sample(k, *ctx)
            rec[f"section{k}.latents"] = generated
            total += generated.shape[2]
            history = torch.cat([generated, history], dim=2)
            real = history[:, :, :total]
            if latent_padding == 0:
                # Next to the input: decoded after the input's last w latents, to cross-fade with it.
                current = decode(torch.cat([video_latents[:, :, -w:], real[:, :, :2 * w]], dim=2))
            elif history_pixels is None:
                current = decode(real)
            else:
                current = decode(real[:, :, :2 * w])
            history_pixels = current if history_pixels is None else lc.soft_append(current, history_pixels, overlap)
        history_pixels = lc.soft_append(input_pixels, history_pixels, overlap)

    if unipc:  # save_bcthw_as_mp4's frames
        x = torch.clamp(history_pixels.float(), -1.0, 1.0) * 127.5 + 127.5
        rec["frames_uint8"] = x.to(torch.uint8)[0].permute(1, 2, 3, 0).contiguous()
    else:  # VaeImageProcessor.postprocess, then (x * 255).round()
        x = (history_pixels * 0.5 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).float().numpy()
        rec["frames_uint8"] = torch.from_numpy((x * 255).round().astype(np.uint8))
    assert (rec["frames_uint8"][: T - overlap].numpy() == frames[: T - overlap]).all(), "the input's frames pass unchanged"

    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in rec.items()}
    meta = {k: v for k, v in case.items() if k not in ("video_from", "end_image_from", "input_frames")}
    meta.update({"height": height, "width": width, "video": video_file, "last_image": end_file,
                 "frames_shape": list(arrays["frames_uint8"].shape),
                 "reference": "FramePack-Studio's Video F1 / Video context (colinurbs/FramePack-Studio) and FramePack PR #491's "
                              "history, with the tiny pipeline's diffusers transformer and VAE"
                              + (" and lllyasviel's sample_hunyuan" if unipc else " and FlowMatchEulerDiscreteScheduler")
                              + f" (framefarm_export.video_cases, torch {torch.__version__}); the video's first encoded frame"
                              + f" is {case['video_from']}'s start image"
                              + (f", the end image {case['end_image_from']}'s" if end_file else "")
                              + "; text embeddings from the public cases",
                 "input_video": {"frames": T, "encoded_frames": F, "latent_frames": L},
                 "generator": "torch.Generator('cpu').manual_seed(seed)"})
    if unipc:
        meta["image_generator"] = "torch.manual_seed(seed + 1), then the VAE's latent_dist.sample()"
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    save_file(arrays, os.path.join(out_dir, f"{name}.safetensors"))
    print(f"{name}: {len(arrays)} tensors, {n} sections, input {T} frames ({L} latents), frames {arrays['frames_uint8'].shape}", flush=True)


def lc_paddings(n):
    """Inverted sampling's latent paddings (demo_gradio.py; Studio's VideoModelGenerator.get_latent_paddings)."""
    return [3] + [2] * (n - 3) + [1, 0] if n > 4 else list(reversed(range(n)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.video_cases")
    p.add_argument("--framepack", required=True, help="a checkout of lllyasviel/FramePack (sample_hunyuan)")
    p.add_argument("--tiny", required=True, help="the tiny pipeline folder (../shared/reference/tiny-framepack)")
    p.add_argument("--inputs", required=True, help="the public reference cases (../shared/reference/cases)")
    p.add_argument("--out", required=True)
    p.add_argument("--ffmpeg", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "node_modules",
                                                    "@ffmpeg-installer", "linux-x64", "ffmpeg"))
    p.add_argument("--only", nargs="*", help="case names to run (default all)")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    models = lc.load_models(a.tiny)
    fp = lc.load_framepack(a.framepack)
    inputs = lc.Inputs(a.inputs)
    os.makedirs(a.out, exist_ok=True)
    with torch.no_grad():
        for case in CASES:
            if not a.only or case["name"] in a.only:
                run_case(case, models, fp, inputs, a.out, a.ffmpeg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
