"""Does the transformer export at a given depth? Answered at a tiny width, on the CPU, in minutes.

The 2+4-block real-width transformer exported (torch.onnx.export, dynamo) in 73 s; the 20+40-block
one failed after ~15 minutes (test/bench/gpu-render/RESULTS.md). Export failures of this kind
depend on the graph's structure, not its width, so this exports FramePack's transformer at a tiny
width and the given depths, each way the exporter does it, and writes what happened (seconds,
error text, ONNX-vs-PyTorch relative L2 through onnxruntime) to OUT/depth-probe.json:
  static       torch.onnx.export(dynamo=True) at fixed shapes, as test/bench/gpu-step/torch_step.py does
  bundle       framefarm_export.onnx_export.export_transformer (dynamic T, h, w, L, Tc), as a bundle holds it
Run: python3 depth_probe.py --out DIR [--depths 2+4,20+40] [--ways static,bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "gpu-node", "export"))

from framefarm_export import onnx_export, wrappers  # noqa: E402
from framefarm_export.export_patches import translation_table  # noqa: E402


def build(double: int, single: int, heads: int, head_dim: int):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(0)
    rope = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=double,
        num_single_layers=single, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=64, pooled_projection_dim=32, rope_theta=256.0, rope_axes_dim=rope,
        image_condition_type=None, has_image_proj=True, image_proj_dim=48, has_clean_x_embedder=True,
    ).eval()
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() >= 2:
                torch.nn.init.normal_(prm, std=0.05)
    return model


def inputs_for(model):
    src = types.SimpleNamespace(transformer=model, image_encoder=types.SimpleNamespace(config=types.SimpleNamespace(image_size=28, patch_size=14)))
    return onnx_export.transformer_example(src, window=3, lh=8, lw=8, text_len=16, valid_text=6)


def export(way, wrapper, ex, path):
    args = tuple(ex.values())
    translation = translation_table("fused", True)
    if way == "static":
        program = torch.onnx.export(wrapper, args, input_names=list(ex), output_names=["noise_pred"], dynamo=True,
                                    optimize=True, custom_translation_table=translation)
        program.save(path)
        return {}
    if way == "bundle":
        src = types.SimpleNamespace(transformer=wrapper.model,
                                    image_encoder=types.SimpleNamespace(config=types.SimpleNamespace(image_size=28, patch_size=14)))
        ext, label = onnx_export.export_transformer(src, os.path.dirname(path), torch.float32, 16, "fused")
        os.replace(os.path.join(os.path.dirname(path), "transformer.onnx"), path)
        return {"variant": label}
    raise ValueError(way)


def rel_l2(path, ex, expected):
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v.numpy() for k, v in ex.items() if k in names}
    got = sess.run(None, feeds)[0]
    exp = expected.numpy()
    return float(np.linalg.norm(got - exp) / np.linalg.norm(exp))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--depths", default="2+4,20+40")
    p.add_argument("--ways", default="static,bundle")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    report = {"torch": torch.__version__, "heads": a.heads, "head_dim": a.head_dim, "runs": []}
    for depth in a.depths.split(","):
        double, single = (int(x) for x in depth.split("+"))
        model = build(double, single, a.heads, a.head_dim)
        wrapper = wrappers.Transformer(model, torch.float32).eval()
        ex = inputs_for(model)
        with torch.no_grad():
            expected = wrapper(*ex.values())
        for way in a.ways.split(","):
            d = os.path.join(a.out, f"{way}-{double}-{single}")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "transformer.onnx")
            run = {"depth": depth, "way": way}
            t0 = time.time()
            try:
                run.update(export(way, wrapper, ex, path))
                run["seconds"] = round(time.time() - t0, 1)
                run["ok"] = True
                run["rel_l2_vs_torch"] = rel_l2(path, ex, expected)
            except Exception as e:  # noqa: BLE001 - the point is to record it
                run["seconds"] = round(time.time() - t0, 1)
                run["ok"] = False
                run["error"] = f"{type(e).__name__}: {str(e)[:4000]}"
                run["traceback_tail"] = traceback.format_exc()[-3000:]
            print(json.dumps({k: v for k, v in run.items() if k != "traceback_tail"})[:1500], flush=True)
            report["runs"].append(run)
            json.dump(report, open(os.path.join(a.out, "depth-probe.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
