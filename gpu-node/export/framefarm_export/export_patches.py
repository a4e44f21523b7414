"""Shape-generic replacements for the few diffusers code paths that tracing would specialise.

Each replacement computes exactly the same values as the original; it only avoids Python control
flow on tensor sizes, so one exported graph serves every frame count and resolution.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def _causal_attention_mask(num_frames, height_width, dtype, device, batch_size=None):
    # Token i belongs to frame i // (h*w); a query may attend keys of its own and earlier frames.
    # Same values as diffusers' prepare_causal_attention_mask, from sizes that stay symbolic.
    frame = torch.arange(num_frames * height_width, device=device) // height_width
    mask = torch.where(frame[None, :] <= frame[:, None], 0.0, float("-inf")).to(dtype)
    if batch_size is not None:
        mask = mask.unsqueeze(0).expand(batch_size, -1, -1)
    return mask


def _upsample_causal_forward(self, hidden_states):
    # diffusers upsamples the first frame spatially and the others spatio-temporally, branching on
    # num_frames > 1. Nearest upsampling of all frames followed by dropping the first factor_t
    # frames equals upsampling frames 1.. alone, and is empty (not an error) for one frame.
    factor_t = int(self.upsample_factor[0])
    first = F.interpolate(hidden_states[:, :, :1].squeeze(2), scale_factor=self.upsample_factor[1:], mode="nearest")
    rest = F.interpolate(hidden_states, scale_factor=self.upsample_factor, mode="nearest")[:, :, factor_t:]
    return self.conv(torch.cat((first.unsqueeze(2), rest), dim=2))


@contextlib.contextmanager
def shape_generic_vae():
    from diffusers.models.autoencoders import autoencoder_kl_hunyuan_video as vae_mod

    saved_mask = vae_mod.prepare_causal_attention_mask
    saved_up = vae_mod.HunyuanVideoUpsampleCausal3D.forward
    vae_mod.prepare_causal_attention_mask = _causal_attention_mask
    vae_mod.HunyuanVideoUpsampleCausal3D.forward = _upsample_causal_forward
    try:
        yield
    finally:
        vae_mod.prepare_causal_attention_mask = saved_mask
        vae_mod.HunyuanVideoUpsampleCausal3D.forward = saved_up
