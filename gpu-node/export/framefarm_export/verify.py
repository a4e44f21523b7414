"""python -m framefarm_export.verify --src PIPELINE --bundle BUNDLE --cases CASES_DIR [--transformer DIR] [--image-encoder DIR]

Runs every exported graph in onnxruntime and the same component in torch (original diffusers
code, no export patches) on the reference inputs and on shapes the reference does not cover
(other prompt lengths, window sizes, resolutions, every decoder frame count), and prints relative
L2 and max |d| errors. Exit 1 if any ONNX-vs-torch error exceeds 1e-4 (fp32) / 2e-2 (half).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
from safetensors.numpy import load_file

from .onnx_export import transformer_example
from .sources import DTYPES, load_sources
from .wrappers import TRANSFORMER_INPUTS, ImageEncoder, TextEncoder, TextEncoder2, Transformer, VaeDecoder, VaeEncoder

ROWS: list[dict] = []


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = np.linalg.norm(a - b)
    n = np.linalg.norm(b)
    return float(d / n) if n > 0 else float(d), float(np.max(np.abs(a - b))) if a.size else 0.0


def record(component, check, got, want, against):
    r, m = rel(got, want)
    ROWS.append({"component": component, "check": check, "against": against, "rel_l2": r, "max_abs": m})
    print(f"{component:15s} {check:45s} vs {against:9s} relL2 {r:.2e} max|d| {m:.2e}", flush=True)
    return r


class Graph:
    def __init__(self, path, providers):
        self.s = ort.InferenceSession(path, providers=providers)

    def __call__(self, **feeds):
        return self.s.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})


def torch_run(module, *args):
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in args])
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def tiled_decode(decode, z, tile_min, stride, blend):
    """diffusers' _temporal_tiled_decode over a decode(tile) callable (numpy)."""
    t = z.shape[2]
    row = []
    for i in range(0, t, stride):
        dec = decode(z[:, :, i : i + tile_min + 1])
        if i > 0:
            dec = dec[:, :, 1:]
        row.append(dec)
    out = []
    for i, tile in enumerate(row):
        if i > 0:
            prev = row[i - 1]
            ext = min(prev.shape[2], tile.shape[2], blend)
            tile = tile.copy()
            for x in range(ext):
                tile[:, :, x] = prev[:, :, -ext + x] * (1 - x / ext) + tile[:, :, x] * (x / ext)
            out.append(tile[:, :, : stride * 4])
        else:
            out.append(tile[:, :, : stride * 4 + 1])
    return np.concatenate(out, axis=2)[:, :, : (t - 1) * 4 + 1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.verify")
    p.add_argument("--src", required=True)
    p.add_argument("--transformer")
    p.add_argument("--image-encoder")
    p.add_argument("--bundle", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--providers", default="CPUExecutionProvider")
    p.add_argument("--report", help="write the rows as JSON here")
    a = p.parse_args(argv)
    man = json.load(open(os.path.join(a.bundle, "framefarm-bundle.json")))
    dtype = DTYPES[man["dtype"]]
    src = load_sources(a.src, a.transformer, a.image_encoder, dtype)
    vae_dtype = next(src.vae.parameters()).dtype
    providers = a.providers.split(",")
    g = {name: Graph(os.path.join(a.bundle, c["file"]), providers) for name, c in man["components"].items()}
    crop = man["text_encoder"]["prompt_template"]["crop_start"]
    sf = man["vae"]["scaling_factor"]
    te = TextEncoder(src.text_encoder, 2).eval()
    te2 = TextEncoder2(src.text_encoder_2).eval()
    ie = ImageEncoder(src.image_encoder, dtype).eval()
    venc = VaeEncoder(src.vae, vae_dtype).eval()
    vdec = VaeDecoder(src.vae, vae_dtype).eval()
    tr = Transformer(src.transformer, dtype).eval()
    tile_min = man["vae"]["tile_sample_min_num_frames"] // 4
    stride = man["vae"]["tile_sample_stride_num_frames"] // 4
    blend = man["vae"]["tile_sample_min_num_frames"] - man["vae"]["tile_sample_stride_num_frames"]

    for case_file in sorted(glob.glob(os.path.join(a.cases, "*.safetensors"))):
        name = os.path.basename(case_file)[: -len(".safetensors")]
        params = json.load(open(case_file[: -len(".safetensors")] + ".json"))
        ref = load_file(case_file)
        print(f"== {name}", flush=True)
        for sfx, prefix in (("0", ""), ("1", "negative_")):
            if f"llama_input_ids{sfx}" not in ref:
                continue
            ids, mask = ref[f"llama_input_ids{sfx}"], ref[f"llama_attention_mask{sfx}"]
            o = g["text_encoder"](input_ids=ids, attention_mask=mask)[0]
            t = torch_run(te, ids, mask)[0]
            record("text_encoder", f"{name} prompt{sfx}", o, t, "torch")
            record("text_encoder", f"{name} prompt{sfx} cropped", o[:, crop:], ref[f"{prefix}prompt_embeds"], "reference")
            cids = ref[f"clip_input_ids{sfx}"]
            o = g["text_encoder_2"](input_ids=cids)[0]
            record("text_encoder_2", f"{name} prompt{sfx}", o, torch_run(te2, cids)[0], "torch")
            record("text_encoder_2", f"{name} prompt{sfx}", o, ref[f"{prefix}pooled_prompt_embeds"], "reference")
        for i, key in ((0, "image_embeds"), (1, "last_image_embeds")):
            if f"siglip_pixel_values{i}" not in ref:
                continue
            px = ref[f"siglip_pixel_values{i}"]
            o = g["image_encoder"](pixel_values=px)[0]
            record("image_encoder", f"{name} image{i}", o, torch_run(ie, px)[0], "torch")
            if i == 0:
                record("image_encoder", f"{name} image{i}", o, ref[key], "reference")
        # VAE encoder: the posterior, and the reference latents drawn with the case's generator.
        gen = torch.Generator("cpu").manual_seed(params["seed"])
        for i, key in ((0, "image_latents"), (1, "last_image_latents")):
            if f"image_pixels{i}" not in ref:
                continue
            px = ref[f"image_pixels{i}"][:, :, None]
            mean, std = g["vae_encoder"](sample=px)
            tm, ts = torch_run(venc, px)
            record("vae_encoder", f"{name} image{i} mean", mean, tm, "torch")
            record("vae_encoder", f"{name} image{i} std", std, ts, "torch")
            noise = torch.randn(mean.shape, generator=gen, dtype=torch.float32).numpy()
            record("vae_encoder", f"{name} image{i} sampled latents", (mean + std * noise) * np.float32(sf), ref[key], "reference")
        # Transformer: every section's step-0 inputs.
        k = 0
        while f"section{k}.noise" in ref:
            tin = {n[len(f"section{k}.transformer_in.") :]: v for n, v in ref.items() if n.startswith(f"section{k}.transformer_in.")}
            feeds = dict(tin)
            feeds["hidden_states"] = ref[f"section{k}.noise"]
            feeds["encoder_hidden_states"] = ref["prompt_embeds"]
            feeds["encoder_attention_mask"] = ref["prompt_attention_mask"].astype(np.float32)
            feeds["pooled_projections"] = ref["pooled_prompt_embeds"]
            ordered = [feeds[n] for n in TRANSFORMER_INPUTS]
            o = g["transformer"](**{n: feeds[n] for n in TRANSFORMER_INPUTS})[0]
            record("transformer", f"{name} section{k} step0", o, torch_run(tr, *ordered)[0], "torch")
            record("transformer", f"{name} section{k} step0", o, ref[f"section{k}.step0.transformer_out"], "reference")
            if "negative_prompt_embeds" in ref:
                feeds["encoder_hidden_states"] = ref["negative_prompt_embeds"]
                feeds["encoder_attention_mask"] = ref["negative_prompt_attention_mask"].astype(np.float32)
                feeds["pooled_projections"] = ref["negative_pooled_prompt_embeds"]
                ordered = [feeds[n] for n in TRANSFORMER_INPUTS]
                neg = g["transformer"](**{n: feeds[n] for n in TRANSFORMER_INPUTS})[0]
                record("transformer", f"{name} section{k} step0 negative prompt", neg, torch_run(tr, *ordered)[0], "torch")
            k += 1
        # Decoder: the pipeline's decode calls through the temporal tiling.
        d = 0
        while f"decode{d}.in" in ref:
            z = ref[f"decode{d}.in"]  # what vae.decode received: already divided by the scaling factor
            onnx_dec = tiled_decode(lambda tile: g["vae_decoder"](latents=tile)[0], z, tile_min, stride, blend)
            if f"decode{d}.out" in ref:
                record("vae_decoder", f"{name} decode{d} tiled", onnx_dec, ref[f"decode{d}.out"].astype(np.float32), "reference")
            d += 1

    print("== shapes beyond the reference", flush=True)
    rng = np.random.default_rng(0)
    c = man["vae"]["latent_channels"]
    for t in range(1, man["components"]["vae_decoder"]["max_latent_frames"] + 1):
        for h, w in ((8, 8), (6, 10)):
            z = rng.standard_normal((1, c, t, h, w)).astype(np.float32)
            record("vae_decoder", f"frames {t} latent {h}x{w}", g["vae_decoder"](latents=z)[0], torch_run(vdec, z)[0], "torch")
    for h, w in ((64, 64), (48, 80)):
        px = rng.uniform(-1, 1, (1, 3, 1, h, w)).astype(np.float32)
        mean, _ = g["vae_encoder"](sample=px)
        record("vae_encoder", f"image {h}x{w} mean", mean, torch_run(venc, px)[0], "torch")
    torch.manual_seed(0)
    for window, lh, lw, valid in ((9, 8, 8, 40), (5, 6, 10, 7), (3, 4, 4, 200)):
        ex = transformer_example(src, window=window, lh=lh, lw=lw, text_len=man["text_encoder"]["max_sequence_length"])
        ex["encoder_attention_mask"][:] = 0
        ex["encoder_attention_mask"][:, :valid] = 1
        feeds = {n: ex[n].numpy() for n in TRANSFORMER_INPUTS}
        o = g["transformer"](**feeds)[0]
        record("transformer", f"window {window} latent {lh}x{lw} text {valid}", o, torch_run(tr, *feeds.values())[0], "torch")

    limit = 1e-4 if man["dtype"] == "fp32" else 2e-2
    worst = max((r["rel_l2"] for r in ROWS if r["against"] == "torch"), default=0.0)
    print(f"worst ONNX-vs-torch relL2 {worst:.2e} (limit {limit:g})", flush=True)
    if a.report:
        with open(a.report, "w") as f:
            json.dump({"providers": providers, "rows": ROWS}, f, indent=1)
    return 0 if worst <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
