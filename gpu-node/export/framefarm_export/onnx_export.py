"""Exports each component with torch.onnx (dynamo) and the dynamic axes the runtime needs."""

from __future__ import annotations

import os

import torch
from torch.export import Dim

from .export_patches import shape_generic_vae
from . import wrappers

# Above this size a component's weights go to one external data file (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1 << 30


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _save(module, args, names_in, names_out, path, dynamic_shapes=None):
    program = torch.onnx.export(
        module,
        args,
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        optimize=True,
    )
    external = _param_bytes(module) > EXTERNAL_DATA_BYTES
    program.save(path, external_data=external)
    data = path + ".data"
    return os.path.basename(data) if external and os.path.exists(data) else None


def export_text_encoder(src, out_dir, seq_len, skip):
    m = wrappers.TextEncoder(src.text_encoder, skip).eval()
    ids = torch.randint(0, src.text_encoder.config.vocab_size, (1, seq_len), dtype=torch.int64)
    mask = torch.ones(1, seq_len, dtype=torch.int64)
    mask[:, seq_len // 2 :] = 0
    return _save(m, (ids, mask), ["input_ids", "attention_mask"], ["hidden_states"], os.path.join(out_dir, "text_encoder.onnx"))


def export_text_encoder_2(src, out_dir, max_length):
    m = wrappers.TextEncoder2(src.text_encoder_2).eval()
    ids = torch.randint(3, src.text_encoder_2.config.vocab_size, (1, max_length), dtype=torch.int64)
    return _save(m, (ids,), ["input_ids"], ["pooled"], os.path.join(out_dir, "text_encoder_2.onnx"))


def export_image_encoder(src, out_dir, size, dtype):
    m = wrappers.ImageEncoder(src.image_encoder, dtype).eval()
    px = torch.randn(1, 3, size["height"], size["width"])
    return _save(m, (px,), ["pixel_values"], ["last_hidden_state"], os.path.join(out_dir, "image_encoder.onnx"))


def export_vae_encoder(src, out_dir, spatial, dtype):
    m = wrappers.VaeEncoder(src.vae, dtype).eval()
    h, w = Dim("latent_h", min=2, max=256), Dim("latent_w", min=2, max=256)
    sample = torch.randn(1, 3, 1, 8 * spatial, 12 * spatial)
    with shape_generic_vae():
        return _save(m, (sample,), ["sample"], ["mean", "std"], os.path.join(out_dir, "vae_encoder.onnx"),
                     dynamic_shapes={"sample": {3: spatial * h, 4: spatial * w}})


def export_vae_decoder(src, out_dir, max_frames, dtype):
    m = wrappers.VaeDecoder(src.vae, dtype).eval()
    c = src.vae.config.latent_channels
    t = Dim("latent_frames", min=1, max=max_frames)
    h, w = Dim("latent_h", min=2, max=256), Dim("latent_w", min=2, max=256)
    latents = torch.randn(1, c, 3, 8, 12)
    with shape_generic_vae():
        return _save(m, (latents,), ["latents"], ["sample"], os.path.join(out_dir, "vae_decoder.onnx"),
                     dynamic_shapes={"latents": {2: t, 3: h, 4: w}})


def transformer_example(src, window=9, lh=8, lw=12, text_len=256, image_tokens=None):
    cfg = src.transformer.config
    c = cfg.in_channels
    vc = src.image_encoder.config
    n_img = image_tokens or (vc.image_size // vc.patch_size) ** 2
    mask = torch.zeros(1, text_len)
    mask[:, : text_len // 3] = 1
    return {
        "hidden_states": torch.randn(1, c, window, lh, lw),
        "timestep": torch.tensor([900.0]),
        "encoder_hidden_states": torch.randn(1, text_len, cfg.text_embed_dim),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim),
        "image_embeds": torch.randn(1, n_img, cfg.image_proj_dim),
        "indices_latents": torch.arange(1, 1 + window),
        "guidance": torch.tensor([10000.0]),
        "latents_clean": torch.randn(1, c, 2, lh, lw),
        "indices_latents_clean": torch.tensor([0, window + 1]),
        "latents_history_2x": torch.randn(1, c, 2, lh, lw),
        "indices_latents_history_2x": torch.tensor([window + 2, window + 3]),
        "latents_history_4x": torch.randn(1, c, 16, lh, lw),
        "indices_latents_history_4x": torch.arange(window + 4, window + 20),
    }


def export_transformer(src, out_dir, dtype, text_len):
    m = wrappers.Transformer(src.transformer, dtype).eval()
    ex = transformer_example(src, text_len=text_len)
    t = Dim("window", min=1, max=64)
    # Latent sizes are even (patch size 2): express them as 2*k so the patchifier needs no guard.
    h, w = 2 * Dim("half_latent_h", min=1, max=128), 2 * Dim("half_latent_w", min=1, max=128)
    dyn = {k: None for k in ex}
    dyn["hidden_states"] = {2: t, 3: h, 4: w}
    dyn["indices_latents"] = {0: t}
    for k in ("latents_clean", "latents_history_2x", "latents_history_4x"):
        dyn[k] = {3: h, 4: w}
    return _save(m, tuple(ex.values()), list(ex.keys()), ["noise_pred"], os.path.join(out_dir, "transformer.onnx"), dynamic_shapes=dyn)
