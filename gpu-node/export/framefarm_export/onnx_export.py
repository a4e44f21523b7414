"""Exports each component with torch.onnx (dynamo) and the dynamic axes the runtime needs.

Every export goes through torch.export, so a size that the model branches on in Python is either
declared dynamic (Dim) and kept symbolic, or the export fails loudly; nothing is baked in silently.
Examples use sizes >= 2 on every dynamic axis (torch.export specialises sizes 0 and 1).
Each export_* returns (external data file name or None, which axes ended up dynamic).
"""

from __future__ import annotations

import os

import torch
from torch.export import Dim

from . import wrappers
from .export_patches import translation_table, shape_generic_vae

# From this size on a component's weights go to one external data file next to the graph
# (protobuf caps a single .onnx at 2 GB, graph included, so leave headroom). The CLI can lower it
# (--external-data-min-mb 0 forces external data, which is how the tiny model tests that path).
EXTERNAL_DATA_BYTES = 1 << 30


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _save(module, args, names_in, names_out, path, dynamic_shapes=None, translation=None):
    program = torch.onnx.export(
        module,
        args,
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        optimize=True,
        custom_translation_table=translation,
    )
    external = _param_bytes(module) >= EXTERNAL_DATA_BYTES
    program.save(path, external_data=external)
    data = path + ".data"
    if external and not os.path.exists(data):
        raise SystemExit(f"error: expected external data {data} was not written")
    return os.path.basename(data) if external else None


def _save_first(module, args, names_in, names_out, path, attempts, translation=None):
    """Exports with the first dynamic-shape variant that torch.export accepts; returns
    (external data, label of the variant). Later variants keep fewer axes dynamic."""
    for i, (label, dyn) in enumerate(attempts):
        try:
            return _save(module, args, names_in, names_out, path, dyn, translation), label
        except Exception as e:  # noqa: BLE001 - an export failure means: try the next variant
            if i == len(attempts) - 1:
                raise
            print(f"  {os.path.basename(path)}: '{label}' did not export ({type(e).__name__}: {str(e)[:300]})", flush=True)


def export_text_encoder(src, out_dir, seq_len, skip):
    """Llama, dynamic batch and sequence (the runtime normally sends crop_start + 256 tokens)."""
    m = wrappers.TextEncoder(src.text_encoder, skip).eval()
    cfg = src.text_encoder.config
    ids = torch.randint(0, cfg.vocab_size, (2, seq_len), dtype=torch.int64)
    mask = torch.ones(2, seq_len, dtype=torch.int64)
    mask[1, seq_len // 2 :] = 0  # right padding, as the tokenizer produces
    batch = Dim("batch", min=1, max=64)
    seq = Dim("seq", min=2, max=max(seq_len, cfg.max_position_embeddings))
    attempts = [
        ("dynamic batch, seq", {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}),
        ("dynamic seq", {"input_ids": {1: seq}, "attention_mask": {1: seq}}),
    ]
    return _save_first(m, (ids, mask), ["input_ids", "attention_mask"], ["hidden_states"], os.path.join(out_dir, "text_encoder.onnx"), attempts)


def export_text_encoder_2(src, out_dir, max_length):
    m = wrappers.TextEncoder2(src.text_encoder_2).eval()
    ids = torch.randint(3, src.text_encoder_2.config.vocab_size, (2, max_length), dtype=torch.int64)
    dyn = {"input_ids": {0: Dim("batch", min=1, max=64)}}
    return _save(m, (ids,), ["input_ids"], ["pooled"], os.path.join(out_dir, "text_encoder_2.onnx"), dyn), "dynamic batch"


def export_image_encoder(src, out_dir, size, dtype):
    m = wrappers.ImageEncoder(src.image_encoder, dtype).eval()
    px = torch.randn(2, 3, size["height"], size["width"])
    dyn = {"pixel_values": {0: Dim("batch", min=1, max=64)}}
    return _save(m, (px,), ["pixel_values"], ["last_hidden_state"], os.path.join(out_dir, "image_encoder.onnx"), dyn), "dynamic batch"


def export_vae_encoder(src, out_dir, dtype):
    """Frames are 1 in FramePack; 4k+1 frames are tried
    as a symbolic size and, should that not export, the graph falls back to exactly 1 frame."""
    m = wrappers.VaeEncoder(src.vae, dtype).eval()
    spatial = src.vae.config.spatial_compression_ratio
    temporal = src.vae.config.temporal_compression_ratio
    h, w = Dim("latent_h", min=2, max=512), Dim("latent_w", min=2, max=512)
    path = os.path.join(out_dir, "vae_encoder.onnx")
    with shape_generic_vae():
        try:
            sample = torch.randn(1, 3, 2 * temporal + 1, 6 * spatial, 10 * spatial)
            frames = temporal * Dim("latent_frames_minus_1", min=0, max=32) + 1
            dyn = {"sample": {2: frames, 3: spatial * h, 4: spatial * w}}
            return _save(m, (sample,), ["sample"], ["mean", "std"], path, dyn), "dynamic frames (4k+1), H, W"
        except Exception as e:  # noqa: BLE001 - any export failure means: fall back to 1 frame
            print(f"  vae_encoder: dynamic frames did not export ({type(e).__name__}: {str(e)[:300]}); using 1 frame", flush=True)
        sample = torch.randn(1, 3, 1, 6 * spatial, 10 * spatial)
        return _save(m, (sample,), ["sample"], ["mean", "std"], path, {"sample": {3: spatial * h, 4: spatial * w}}), "1 frame, dynamic H, W"


def export_vae_decoder(src, out_dir, max_frames, dtype):
    m = wrappers.VaeDecoder(src.vae, dtype).eval()
    c = src.vae.config.latent_channels
    t = Dim("latent_frames", min=1, max=max_frames)
    h, w = Dim("latent_h", min=2, max=512), Dim("latent_w", min=2, max=512)
    latents = torch.randn(1, c, 3, 8, 12)
    with shape_generic_vae():
        ext = _save(m, (latents,), ["latents"], ["sample"], os.path.join(out_dir, "vae_decoder.onnx"),
                    dynamic_shapes={"latents": {2: t, 3: h, 4: w}})
    return ext, f"dynamic frames 1..{max_frames}, h, w"


def transformer_example(src, window=9, lh=8, lw=12, text_len=256, valid_text=None, clean=2, image_tokens=None):
    """One denoising step's inputs, shaped like the pipeline's (batch 1)."""
    cfg = src.transformer.config
    c = cfg.in_channels
    vc = src.image_encoder.config
    n_img = image_tokens or (vc.image_size // vc.patch_size) ** 2
    mask = torch.zeros(1, text_len)
    mask[:, : valid_text or max(1, text_len // 3)] = 1
    return {
        "hidden_states": torch.randn(1, c, window, lh, lw),
        "timestep": torch.tensor([900.0]),
        "encoder_hidden_states": torch.randn(1, text_len, cfg.text_embed_dim),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim),
        "image_embeds": torch.randn(1, n_img, cfg.image_proj_dim),
        "indices_latents": torch.arange(1, 1 + window),
        "guidance": torch.tensor([10000.0]),
        "latents_clean": torch.randn(1, c, clean, lh, lw),
        "indices_latents_clean": torch.cat([torch.tensor([0]), torch.arange(window + 1, window + clean)]),
        "latents_history_2x": torch.randn(1, c, 2, lh, lw),
        "indices_latents_history_2x": torch.arange(window + clean, window + clean + 2),
        "latents_history_4x": torch.randn(1, c, 16, lh, lw),
        "indices_latents_history_4x": torch.arange(window + clean + 2, window + clean + 18),
    }


def export_transformer(src, out_dir, dtype, text_len, attention="plain"):
    """attention: 'plain' (MatMul/Softmax, any provider) or 'fused' (com.microsoft.MultiHeadAttention)."""
    m = wrappers.Transformer(src.transformer, dtype).eval()
    ex = transformer_example(src, text_len=text_len)
    t = Dim("window", min=1, max=64)
    tc = Dim("clean_frames", min=1, max=64)
    seq = Dim("text_len", min=2, max=4096)
    # Latent sizes are even (patch size 2): express them as 2*k so the patchifier needs no guard.
    h, w = 2 * Dim("half_latent_h", min=1, max=256), 2 * Dim("half_latent_w", min=1, max=256)
    dyn = {k: None for k in ex}
    dyn["hidden_states"] = {2: t, 3: h, 4: w}
    dyn["indices_latents"] = {0: t}
    dyn["encoder_hidden_states"] = {1: seq}
    dyn["encoder_attention_mask"] = {1: seq}
    dyn["latents_clean"] = {2: tc, 3: h, 4: w}
    dyn["indices_latents_clean"] = {0: tc}
    for k in ("latents_history_2x", "latents_history_4x"):
        dyn[k] = {3: h, 4: w}
    fixed_tc = dict(dyn, latents_clean={3: h, 4: w}, indices_latents_clean=None)
    attempts = [("dynamic T, h, w, L, Tc", dyn), ("dynamic T, h, w, L (Tc fixed)", fixed_tc)]
    path = os.path.join(out_dir, "transformer.onnx")
    if attention == "plain":
        ext, label = _save_first(m, tuple(ex.values()), list(ex.keys()), ["noise_pred"], path, attempts, translation_table("plain"))
        return ext, f"{label}; plain attention"
    # Fused: MultiHeadAttention with its present_key/value outputs (see export_patches), else without.
    try:
        ext, label = _save_first(m, tuple(ex.values()), list(ex.keys()), ["noise_pred"], path, attempts, translation_table(attention, True))
        variant = "fused attention (MultiHeadAttention with present outputs)"
    except Exception as e:  # noqa: BLE001 - fall back to the single-output form
        print(f"  transformer: fused attention with present outputs did not export ({type(e).__name__}: {str(e)[:300]})", flush=True)
        ext, label = _save_first(m, tuple(ex.values()), list(ex.keys()), ["noise_pred"], path, attempts, translation_table(attention, False))
        variant = "fused attention (MultiHeadAttention)"
    check_fused(path)
    return ext, f"{label}; {variant}"


def check_fused(path):
    """A fused export must hold MultiHeadAttention nodes, else the translation did not apply."""
    import onnx

    ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
    if "MultiHeadAttention" not in ops:
        raise SystemExit(f"error: {path}: --attention fused produced no MultiHeadAttention node")
    return ops
