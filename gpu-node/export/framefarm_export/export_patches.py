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


# Fused attention: ONNX Runtime's contrib op com.microsoft.MultiHeadAttention, which the CPU and
# WebGPU providers implement (the WebGPU one with flash attention), instead of the MatMul ->
# Softmax -> MatMul that torch.onnx makes of scaled_dot_product_attention. The unfused form
# materialises the whole [heads, tokens, tokens] score matrix: 24 x 19,385^2 in a 640x640 FramePack
# section, which no WebGPU storage buffer holds.
#
# It is done in the ONNX translation of aten.scaled_dot_product_attention (torch.onnx.export's
# custom_translation_table), so torch.export traces exactly the same program as for plain
# attention. Unmasked calls (every HunyuanVideo block at batch 1) become MultiHeadAttention;
# masked ones (the token refiner) stay MatMul/Softmax.
ATTENTION_MODES = ("plain", "fused")


def _mha_op(onnxscript, outputs: int):
    """onnxscript op for com.microsoft.MultiHeadAttention (query, key, value; num_heads, scale).
    The onnx package has no schema for contrib ops, so the part of it used here is declared."""
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        "MultiHeadAttention",
        "com.microsoft",
        1,
        inputs=[param("query", "T"), param("key", "T"), param("value", "T")],
        outputs=[param("output", "T"), param("present_key", "T", param_option=optional), param("present_value", "T", param_option=optional)][:outputs],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "", required=True),
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "", required=False),
        ],
    )
    return onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MultiHeadAttention", schema)


def _sdpa_fused(present_outputs: bool):
    import math

    import onnxscript
    from onnx_ir import DataType
    from onnxscript import opset18 as op

    mha = _mha_op(onnxscript, 3 if present_outputs else 1)

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        # aten layout: [batch, heads, tokens, head_dim]
        if dropout_p != 0.0 or is_causal or enable_gqa:
            raise NotImplementedError("fused attention export: dropout, causal and GQA are not used by FramePack")
        heads, head_dim = query.shape[1], query.shape[3]
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            raise NotImplementedError("fused attention export needs static heads and head_dim")
        s = float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)
        if attn_mask is not None:
            scores = op.MatMul(op.Mul(query, op.CastLike(op.Constant(value_float=s), query)), op.Transpose(key, perm=[0, 1, 3, 2]))
            if attn_mask.dtype == DataType.BOOL:
                scores = op.Where(attn_mask, scores, op.CastLike(op.Constant(value_float=float("-inf")), scores))
            else:
                scores = op.Add(scores, op.CastLike(attn_mask, scores))
            return op.MatMul(op.Softmax(scores, axis=-1), value)
        flat = op.Constant(value_ints=[0, 0, -1])

        def bsd(x):
            return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), flat)

        if present_outputs:
            # present_key/present_value are requested only because some WebGPU kernels take their
            # flash-attention path only when they exist; nothing reads them.
            out, _, _ = mha(bsd(query), bsd(key), bsd(value), num_heads=heads, scale=s)
        else:
            out = mha(bsd(query), bsd(key), bsd(value), num_heads=heads, scale=s)
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, head_dim])), perm=[0, 2, 1, 3])

    return sdpa


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int64_compare(name: str):
    """operator.le/lt/ge/gt on sizes, with Python int constants brought into int64's range.

    torch.export bounds the text crop's data-dependent length (diffusers keeps the first
    mask.sum() tokens) and checks each derived size against its bound; the bounds grow with
    depth, and at 20 + 40 blocks one passes 2**63 (`operator.le(sym_size_int, 15564440312192434176)`),
    which ONNX cannot hold, so the full-depth export failed. A size is an int64, so comparing it
    with the clamped bound gives the same answer."""
    from onnxscript import opset18 as op

    onnx_op = {"le": op.LessOrEqual, "lt": op.Less, "ge": op.GreaterOrEqual, "gt": op.Greater}[name]

    def clamp(x):
        return max(INT64_MIN, min(INT64_MAX, x)) if isinstance(x, int) and not isinstance(x, bool) else x

    def compare(a, b):
        return onnx_op(clamp(a), clamp(b))

    return compare


def translation_table(mode: str, present_outputs: bool = True) -> dict:
    """custom_translation_table for torch.onnx.export: sizes compared within int64 and, under
    attention `mode` 'fused', scaled_dot_product_attention as MultiHeadAttention."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    import operator

    table = {getattr(operator, name): _int64_compare(name) for name in ("le", "lt", "ge", "gt")}
    if mode == "fused":
        table[torch.ops.aten.scaled_dot_product_attention.default] = _sdpa_fused(present_outputs)
    return table
