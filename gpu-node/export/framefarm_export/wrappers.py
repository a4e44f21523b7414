"""torch modules with the bundle's I/O contract: float32/int64 in, float32 out, fixed names."""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Llama: hidden_states[-(skip+1)] as the pipeline takes it (before the crop)."""

    def __init__(self, model, num_hidden_layers_to_skip: int):
        super().__init__()
        self.model = model
        self.index = -(num_hidden_layers_to_skip + 1)

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[self.index].float()


class TextEncoder2(nn.Module):
    """CLIP text model: pooler_output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, output_hidden_states=False).pooler_output.float()


class ImageEncoder(nn.Module):
    """SigLIP vision model: last_hidden_state."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values.to(self.dtype)).last_hidden_state.float()


class VaeEncoder(nn.Module):
    """Encoder + quant_conv -> posterior mean and std (logvar clamped as DiagonalGaussianDistribution)."""

    def __init__(self, vae, dtype):
        super().__init__()
        self.vae = vae
        self.dtype = dtype

    def forward(self, sample):
        moments = self.vae.quant_conv(self.vae.encoder(sample.to(self.dtype))).float()
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        return mean, torch.exp(0.5 * logvar)


class VaeDecoder(nn.Module):
    """post_quant_conv + decoder on latents already divided by the scaling factor (no tiling)."""

    def __init__(self, vae, dtype):
        super().__init__()
        self.vae = vae
        self.dtype = dtype

    def forward(self, latents):
        return self.vae.decoder(self.vae.post_quant_conv(latents.to(self.dtype))).float()


TRANSFORMER_INPUTS = [
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "pooled_projections",
    "image_embeds",
    "indices_latents",
    "guidance",
    "latents_clean",
    "indices_latents_clean",
    "latents_history_2x",
    "indices_latents_history_2x",
    "latents_history_4x",
    "indices_latents_history_4x",
]


class Transformer(nn.Module):
    """One denoising step of HunyuanVideoFramepackTransformer3DModel with every FramePack input."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states,
        encoder_attention_mask,
        pooled_projections,
        image_embeds,
        indices_latents,
        guidance,
        latents_clean,
        indices_latents_clean,
        latents_history_2x,
        indices_latents_history_2x,
        latents_history_4x,
        indices_latents_history_4x,
    ):
        d = self.dtype
        return self.model(
            hidden_states=hidden_states.to(d),
            timestep=timestep.to(d),
            encoder_hidden_states=encoder_hidden_states.to(d),
            encoder_attention_mask=encoder_attention_mask.to(d),
            pooled_projections=pooled_projections.to(d),
            image_embeds=image_embeds.to(d),
            indices_latents=indices_latents,
            guidance=guidance.to(d),
            latents_clean=latents_clean.to(d),
            indices_latents_clean=indices_latents_clean,
            latents_history_2x=latents_history_2x.to(d),
            indices_latents_history_2x=indices_latents_history_2x,
            latents_history_4x=latents_history_4x.to(d),
            indices_latents_history_4x=indices_latents_history_4x,
            return_dict=False,
        )[0].float()
