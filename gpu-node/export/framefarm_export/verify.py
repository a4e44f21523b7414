"""python -m framefarm_export.verify --src PIPELINE --bundle BUNDLE [--cases CASES_DIR]
                                   [--transformer DIR] [--image-encoder DIR] [--providers P,P] [--report FILE]

Runs every graph of a bundle in onnxruntime (CPU EP, and CUDA EP when available) and the same
component in torch (original diffusers/transformers code, no export patches) on the reference
cases' inputs and on shapes the cases do not cover (batch 2, other prompt lengths, every decoder
frame count 1..5 at several latent sizes, window sizes 9/5/3, other text and clean lengths), and
prints relative L2 (||a-b||/||b||) and max |a-b|: ONNX vs torch and ONNX vs reference.
Exit 1 if an ONNX-vs-torch relative L2 exceeds the limit for the bundle's dtype and provider.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import torch
from safetensors.numpy import load_file

from .manifest import copy_tokenizer
from .onnx_export import transformer_example
from .sources import DTYPES, load_sources
from .wrappers import TRANSFORMER_INPUTS, ImageEncoder, TextEncoder, TextEncoder2, Transformer, VaeDecoder, VaeEncoder

# ONNX-vs-torch limits on relative L2. CUDA EP may use TF32 for fp32 matmuls and convolutions.
LIMITS = {("fp32", "CPUExecutionProvider"): 1e-4, ("fp32", "CUDAExecutionProvider"): 5e-3}
HALF_LIMIT = 2e-2


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf")
    d = np.linalg.norm(a - b)
    n = np.linalg.norm(b)
    return (float(d / n) if n > 0 else float(d)), (float(np.max(np.abs(a - b))) if a.size else 0.0)


TORCH_DEVICE = torch.device("cpu")


def torch_run(module, *args):
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)).to(TORCH_DEVICE) for a in args])
    out = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in out]


def tiled_decode(decode, z, tile_latent_frames, stride_latent_frames, stride_sample_frames, blend_frames, ratio):
    """diffusers' AutoencoderKLHunyuanVideo._temporal_tiled_decode in numpy, over decode(tile)."""
    t = z.shape[2]
    row = []
    for i in range(0, t, stride_latent_frames):
        dec = decode(z[:, :, i : i + tile_latent_frames + 1])
        row.append(dec[:, :, 1:] if i > 0 else dec)
    out = []
    for i, tile in enumerate(row):
        if i > 0:
            prev = row[i - 1]
            ext = min(prev.shape[2], tile.shape[2], blend_frames)
            tile = tile.copy()
            for x in range(ext):
                tile[:, :, x] = prev[:, :, -ext + x] * (1 - x / ext) + tile[:, :, x] * (x / ext)
            out.append(tile[:, :, :stride_sample_frames])
        else:
            out.append(tile[:, :, : stride_sample_frames + 1])
    return np.concatenate(out, axis=2)[:, :, : (t - 1) * ratio + 1]


class Check:
    """One comparison: `onnx(sessions)` gives the ONNX outputs; torch/ref are the expected ones."""

    def __init__(self, component, check, onnx, torch_out=None, ref_out=None):
        self.component, self.check, self.onnx, self.torch_out, self.ref_out = component, check, onnx, torch_out, ref_out


def _dynamic(session, name, axis):
    shape = next(i.shape for i in session.get_inputs() if i.name == name)
    return not isinstance(shape[axis], int)


def _case_fits(ref, man):
    """The reference cases hold tiny-model tensors; a real bundle is checked on synthetic inputs only."""
    return (ref["prompt_embeds"].shape[-1] == man["text_encoder"]["hidden_size"]
            and ref["pooled_prompt_embeds"].shape[-1] == man["text_encoder_2"]["hidden_size"]
            and ref["image_embeds"].shape[-1] == man["image_encoder"]["hidden_size"]
            and ref["image_latents"].shape[1] == man["vae"]["latent_channels"])


def build_checks(a, man, src, g0):
    """Computes the torch/reference side of every check once; g0 (any provider's sessions) is only
    used to read which axes the graphs have dynamic."""
    dtype = DTYPES[man["dtype"]]
    te = TextEncoder(src.text_encoder, man["text_encoder"]["num_hidden_layers_to_skip"]).eval()
    te2 = TextEncoder2(src.text_encoder_2).eval()
    ie = ImageEncoder(src.image_encoder, dtype).eval()
    venc = VaeEncoder(src.vae, dtype).eval()
    vdec = VaeDecoder(src.vae, dtype).eval()
    tr = Transformer(src.transformer, dtype).eval()
    crop = man["text_encoder"]["prompt_template"]["crop_start"]
    v = man["vae"]
    ratio = v["temporal_compression_ratio"]
    tiling = (v["tile_sample_min_num_frames"] // ratio, v["tile_sample_stride_num_frames"] // ratio,
              v["tile_sample_stride_num_frames"], v["tile_sample_min_num_frames"] - v["tile_sample_stride_num_frames"], ratio)
    checks = []
    add = checks.append

    def run(name, **feeds):
        return lambda g: g[name](**feeds)

    for case_file in sorted(glob.glob(os.path.join(a.cases, "*.safetensors"))) if a.cases else []:
        name = os.path.basename(case_file)[: -len(".safetensors")]
        with open(case_file[: -len(".safetensors")] + ".json", encoding="utf-8") as f:
            params = json.load(f)
        ref = load_file(case_file)
        if not _case_fits(ref, man):
            print(f"skipping case {name}: its tensors come from a model of other sizes", flush=True)
            continue
        for sfx, prefix in (("0", ""), ("1", "negative_")):
            if f"llama_input_ids{sfx}" not in ref:
                continue
            ids, mask = ref[f"llama_input_ids{sfx}"], ref[f"llama_attention_mask{sfx}"]
            add(Check("text_encoder", f"{name} prompt{sfx}", run("text_encoder", input_ids=ids, attention_mask=mask), torch_run(te, ids, mask)))
            add(Check("text_encoder", f"{name} prompt{sfx} cropped", lambda g, ids=ids, mask=mask: [g["text_encoder"](input_ids=ids, attention_mask=mask)[0][:, crop:]],
                      ref_out=[ref[f"{prefix}prompt_embeds"]]))
            cids = ref[f"clip_input_ids{sfx}"]
            add(Check("text_encoder_2", f"{name} prompt{sfx}", run("text_encoder_2", input_ids=cids), torch_run(te2, cids), [ref[f"{prefix}pooled_prompt_embeds"]]))
        for i, key in ((0, "image_embeds"), (1, "last_image_embeds")):
            if f"siglip_pixel_values{i}" in ref:
                px = ref[f"siglip_pixel_values{i}"]
                add(Check("image_encoder", f"{name} image{i}", run("image_encoder", pixel_values=px), torch_run(ie, px), [ref[key]] if key in ref else None))
        # VAE encoder: the posterior, and the latents the pipeline drew from it with the case's
        # generator (first image, then end image; then the sections' noise, not needed here).
        gen = torch.Generator("cpu").manual_seed(params["seed"])
        for i, key in ((0, "image_latents"), (1, "last_image_latents")):
            if f"image_pixels{i}" not in ref:
                continue
            px = ref[f"image_pixels{i}"][:, :, None]
            add(Check("vae_encoder", f"{name} image{i} mean, std", run("vae_encoder", sample=px), torch_run(venc, px)))
            noise = torch.randn((1, v["latent_channels"], 1, px.shape[3] // v["spatial_compression_ratio"], px.shape[4] // v["spatial_compression_ratio"]),
                                generator=gen, dtype=torch.float32).numpy()
            sf = np.float32(v["scaling_factor"])

            def sampled(g, px=px, noise=noise, sf=sf):
                mean, std = g["vae_encoder"](sample=px)
                return [(mean + std * noise) * sf]

            add(Check("vae_encoder", f"{name} image{i} sampled latents", sampled, ref_out=[ref[key]]))
        # Transformer: every section's step-0 inputs (and the negative prompt's under true CFG).
        k = 0
        while f"section{k}.noise" in ref:
            pfx = f"section{k}.transformer_in."
            feeds = {n[len(pfx):]: t for n, t in ref.items() if n.startswith(pfx)}
            feeds["hidden_states"] = ref[f"section{k}.noise"]
            for tag, p in (("", ""), (" negative prompt", "negative_")):
                if f"{p}prompt_embeds" not in ref:
                    continue
                f = dict(feeds, encoder_hidden_states=ref[f"{p}prompt_embeds"], pooled_projections=ref[f"{p}pooled_prompt_embeds"],
                         encoder_attention_mask=ref[f"{p}prompt_attention_mask"].astype(np.float32))
                f = {n: f[n] for n in TRANSFORMER_INPUTS}
                add(Check("transformer", f"{name} section{k} step0{tag}", run("transformer", **f), torch_run(tr, *f.values()),
                          [ref[f"section{k}.step0.transformer_out"]] if not p else None))
            k += 1
        # Decoder: each tile of each decode call alone, then the whole framewise decode (the
        # tiling the TypeScript runtime reproduces) against diffusers' vae.decode and the reference.
        d = 0
        while f"decode{d}.in" in ref:
            z = ref[f"decode{d}.in"]  # what vae.decode received: already divided by the scaling factor
            for i in range(0, z.shape[2], tiling[1]):
                tile = np.ascontiguousarray(z[:, :, i : i + tiling[0] + 1])
                add(Check("vae_decoder", f"{name} decode{d} tile@{i} ({tile.shape[2]} frames)", run("vae_decoder", latents=tile), torch_run(vdec, tile)))
            with torch.no_grad():
                whole = src.vae.decode(torch.from_numpy(z).to(TORCH_DEVICE, dtype)).sample.float().cpu().numpy()
            add(Check("vae_decoder", f"{name} decode{d} framewise ({z.shape[2]} frames)",
                      lambda g, z=z: [tiled_decode(lambda t: g["vae_decoder"](latents=np.ascontiguousarray(t))[0], z, *tiling)],
                      [whole], [ref[f"decode{d}.out"].astype(np.float32)] if f"decode{d}.out" in ref else None))
            d += 1

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    # Text encoders at batch 2 and another prompt length (right padding, as the tokenizer pads).
    ids = rng.integers(0, src.text_encoder.config.vocab_size, (2, crop + 40)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, crop + 17 :] = 0
    if _dynamic(g0["text_encoder"], "input_ids", 0):
        add(Check("text_encoder", f"batch 2, {ids.shape[1]} tokens", run("text_encoder", input_ids=ids, attention_mask=mask), torch_run(te, ids, mask)))
    else:
        add(Check("text_encoder", f"{ids.shape[1]} tokens", run("text_encoder", input_ids=ids[1:], attention_mask=mask[1:]), torch_run(te, ids[1:], mask[1:])))
    cids = rng.integers(3, src.text_encoder_2.config.vocab_size, (2, man["text_encoder_2"]["max_length"])).astype(np.int64)
    add(Check("text_encoder_2", "batch 2", run("text_encoder_2", input_ids=cids), torch_run(te2, cids)))
    size = man["image_encoder"]["image_size"]
    px = rng.uniform(-1, 1, (2, 3, size["height"], size["width"])).astype(np.float32)
    add(Check("image_encoder", "batch 2", run("image_encoder", pixel_values=px), torch_run(ie, px)))
    c = v["latent_channels"]
    for t in range(1, man["components"]["vae_decoder"]["max_latent_frames"] + 1):
        for h, w in ((8, 8), (8, 16), (6, 10)):
            z = rng.standard_normal((1, c, t, h, w)).astype(np.float32)
            add(Check("vae_decoder", f"{t} frames, latent {h}x{w}", run("vae_decoder", latents=z), torch_run(vdec, z)))
    enc_frames = [1, 5, 9] if _dynamic(g0["vae_encoder"], "sample", 2) else [1]
    for frames in enc_frames:
        for h, w in ((64, 64), (48, 80)):
            px = rng.uniform(-1, 1, (1, 3, frames, h, w)).astype(np.float32)
            add(Check("vae_encoder", f"{frames} frames, {h}x{w}", run("vae_encoder", sample=px), torch_run(venc, px)))
    tc_dynamic = _dynamic(g0["transformer"], "latents_clean", 2)
    L = man["text_encoder"]["max_sequence_length"]
    for window, lh, lw, text_len, valid, clean in ((9, 8, 8, L, 40, 2), (9, 6, 10, 100, 7, 2), (5, 8, 8, L, L, 2),
                                                    (5, 6, 10, 77, 30, 3 if tc_dynamic else 2), (3, 4, 4, L, 200, 2)):
        ex = transformer_example(src, window=window, lh=lh, lw=lw, text_len=text_len, valid_text=valid, clean=clean)
        f = {n: ex[n].numpy() for n in TRANSFORMER_INPUTS}
        add(Check("transformer", f"window {window}, latent {lh}x{lw}, text {valid}/{text_len}, clean {clean}", run("transformer", **f), torch_run(tr, *f.values())))
    return checks


def tokenizer_rebuild_row(src_dir):
    """The path a real HunyuanVideo tokenizer_2 takes (vocab.json + merges.txt, no tokenizer.json):
    rebuild the tiny CLIP tokenizer from such files and compare ids with its tokenizer.json."""
    from tokenizers import Tokenizer

    orig_dir = os.path.join(src_dir, "tokenizer_2")
    with open(os.path.join(orig_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    if tj["model"]["type"] != "BPE":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        slow = os.path.join(tmp, "slow")
        os.makedirs(slow)
        with open(os.path.join(slow, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(tj["model"]["vocab"], f)
        with open(os.path.join(slow, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join((m if isinstance(m, str) else " ".join(m)) + "\n" for m in tj["model"]["merges"]))
        with open(os.path.join(orig_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        with open(os.path.join(slow, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f)
        copy_tokenizer(slow, tmp, "rebuilt")
        a = Tokenizer.from_file(os.path.join(tmp, "rebuilt", "tokenizer.json"))
        b = Tokenizer.from_file(os.path.join(orig_dir, "tokenizer.json"))
        texts = ["A cat walks on the grass, realistic style.", "Hello   WORLD!! 123 café", "the quick brown fox"]
        bad = sum(a.encode(t).ids != b.encode(t).ids for t in texts)
        return {"component": "tokenizer_2", "check": f"rebuilt from vocab.json+merges.txt: {len(texts) - bad}/{len(texts)} prompts same ids",
                "against": "reference", "provider": "-", "rel_l2": float(bad), "max_abs": float(bad)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.verify")
    p.add_argument("--src", required=True)
    p.add_argument("--transformer")
    p.add_argument("--image-encoder")
    p.add_argument("--bundle", required=True)
    p.add_argument("--cases", help="folder of reference cases (<name>.json + <name>.safetensors); cases of other model sizes are skipped")
    p.add_argument("--providers", help="comma-separated; default CPU, plus CUDA when this onnxruntime has it")
    p.add_argument("--report", help="JSON file to add the rows to (default BUNDLE/export-report.json)")
    p.add_argument("--torch-device", help="where the torch side runs; default cpu for fp32 bundles, cuda (if any) for fp16/bf16")
    a = p.parse_args(argv)
    global TORCH_DEVICE
    with open(os.path.join(a.bundle, "framefarm-bundle.json"), encoding="utf-8") as f:
        man = json.load(f)
    available = ort.get_available_providers()
    providers = a.providers.split(",") if a.providers else ["CPUExecutionProvider"] + [x for x in ["CUDAExecutionProvider"] if x in available]
    print(f"onnxruntime {ort.__version__}, available providers {available}; verifying with {providers}", flush=True)
    half = man["dtype"] != "fp32"
    TORCH_DEVICE = torch.device(a.torch_device or ("cuda" if half and torch.cuda.is_available() else "cpu"))
    src = load_sources(a.src, a.transformer, a.image_encoder, DTYPES[man["dtype"]])
    for m in (src.text_encoder, src.text_encoder_2, src.image_encoder, src.vae, src.transformer):
        m.to(TORCH_DEVICE)
    print(f"torch side on {TORCH_DEVICE}", flush=True)

    sessions = {}
    for prov in providers:
        try:
            g = {}
            for name, comp in man["components"].items():
                s = ort.InferenceSession(os.path.join(a.bundle, comp["file"]), providers=[prov, "CPUExecutionProvider"] if prov != "CPUExecutionProvider" else [prov])
                if s.get_providers()[0] != prov:
                    raise RuntimeError(f"{name}: session fell back to {s.get_providers()}")
                g[name] = (lambda s: lambda **feeds: s.run(None, {k: np.ascontiguousarray(x) for k, x in feeds.items()}))(s)
                g[name].session = s
            sessions[prov] = g
        except Exception as e:  # noqa: BLE001 - a provider that cannot load is reported, not fatal
            print(f"provider {prov} unusable: {e}", flush=True)
    if not sessions:
        raise SystemExit("error: no onnxruntime provider could load the bundle")
    g0 = {k: f.session for k, f in next(iter(sessions.values())).items()}
    checks = build_checks(a, man, src, g0)

    rows = []
    for prov, g in sessions.items():
        print(f"== {prov}", flush=True)
        for ch in checks:
            got = ch.onnx(g)
            for against, want in (("torch", ch.torch_out), ("reference", ch.ref_out)):
                if want is None:
                    continue
                pairs = [rel(x, y) for x, y in zip(got, want)]
                r, m = max(q[0] for q in pairs), max(q[1] for q in pairs)
                rows.append({"component": ch.component, "check": ch.check, "against": against, "provider": prov, "rel_l2": r, "max_abs": m})
                print(f"{ch.component:14s} {ch.check:60s} vs {against:9s} relL2 {r:.2e} max|d| {m:.2e}", flush=True)
    try:
        row = tokenizer_rebuild_row(a.src)
        if row:
            rows.append(row)
            print(f"tokenizer_2    {row['check']}", flush=True)
    except Exception as e:  # noqa: BLE001 - informative only
        print(f"tokenizer_2 rebuild check failed: {type(e).__name__}: {e}", flush=True)

    print("\n| component | against | provider | rows | worst relative L2 | worst max abs |\n|---|---|---|---|---|---|")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["component"], r["against"], r["provider"])].append(r)
    for (comp, against, prov), rs in groups.items():
        print(f"| {comp} | {against} | {prov.replace('ExecutionProvider', '')} | {len(rs)} | "
              f"{max(r['rel_l2'] for r in rs):.1e} | {max(r['max_abs'] for r in rs):.1e} |")
    failed = []
    for r in rows:
        if r["against"] != "torch":
            continue
        limit = LIMITS.get((man["dtype"], r["provider"]), HALF_LIMIT)
        if not r["rel_l2"] <= limit:
            failed.append(r)
    for r in failed:
        print(f"OVER LIMIT: {r}", flush=True)
    report_path = a.report or os.path.join(a.bundle, "export-report.json")
    report = {}
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    report["verification"] = {"onnxruntime": ort.__version__, "providers": list(sessions), "limits": {f"{k[0]}/{k[1]}": v for k, v in LIMITS.items()},
                              "half_limit": HALF_LIMIT, "passed": not failed, "rows": rows}
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"{'PASS' if not failed else 'FAIL'}: {len(rows)} rows, {len(failed)} over limit; report {report_path}", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
