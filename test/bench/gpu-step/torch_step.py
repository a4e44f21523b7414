"""The PyTorch side of the gpu-step benchmark, and the ONNX export the gpu-node side runs.

Builds HunyuanVideoFramepackTransformer3DModel at the real width (24 heads x 128, text 4096,
pooled 768, image_proj 1152, 16 latent channels, rope (16, 56, 56)) with reduced depth and random
weights, times one denoising step in bf16 with SDPA on the GPU (CUDA events, median), a whole
section (--steps steps with the Euler update), the VAE decode of one section (diffusers'
AutoencoderKLHunyuanVideo at its default, HunyuanVideo, config with random weights, fp16), measures
the bf16 matmul ceiling, then exports the same transformer weights in fp16 with framefarm's
exporter (--attention fused: com.microsoft.MultiHeadAttention) and saves the step's inputs and
PyTorch's output for the TypeScript side, plus the helper graphs main.ts uses (helper_graphs).

  python test/bench/gpu-step/torch_step.py --out DIR [--double 2 --single 4 --height 640 --width 640 --window 9]
      [--attention fused|plain] [--steps 25] [--no-vae]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "gpu-node", "export"))


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def step_flops(cfg, tokens_img, tokens_txt):
    """Matmul FLOPs of one step (attention scores + projections + MLPs), refiner and embedders ignored."""
    d, n = cfg["heads"] * cfg["head_dim"], tokens_img + tokens_txt
    mlp = 4 * d
    double = 2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d  # both streams' qkv+out and MLPs, joint attention
    single = 2 * n * (3 * d * d + d * mlp + (d + mlp) * d) + 4 * n * n * d
    return cfg["double"] * double + cfg["single"] * single


def helper_graphs(out_dir, inputs, tokens, width=3072, heads=24):
    """Small graphs for main.ts (IR version 10, which onnxruntime 1.30 reads):
    euler.onnx: latents + dt * noise_pred (float32, as the gpu-node's eulerStep); upload.onnx: an
    Identity per per-section float input, so a session whose outputs stay on the GPU uploads them
    once; matmul.onnx and mha.onnx: the step's two kinds of heavy work alone, to see where a
    provider's time goes: 8 fp16 MatMuls of the MLP's shape ([tokens, width] x [width, 4 width] and
    back) and 3 chained fp16 MultiHeadAttention calls over all tokens."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(graph, name, domains=()):
        opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
        onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), os.path.join(out_dir, name))

    def vi(name, shape, t=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, t, shape)

    lat = list(inputs["hidden_states"].shape)
    save(helper.make_graph([helper.make_node("Mul", ["dt", "noise_pred"], ["step"]), helper.make_node("Add", ["latents", "step"], ["latents_out"])],
                           "euler", [vi("latents", lat), vi("noise_pred", lat), vi("dt", [1])], [vi("latents_out", lat)]), "euler.onnx")
    names = [k for k, v in inputs.items() if v.is_floating_point() and k not in ("hidden_states", "timestep")]
    save(helper.make_graph([helper.make_node("Identity", [n], [n + "_gpu"]) for n in names], "upload",
                           [vi(n, list(inputs[n].shape)) for n in names], [vi(n + "_gpu", list(inputs[n].shape)) for n in names]), "upload.onnx")
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((width, 4 * width)) * 0.02).astype(np.float16), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4 * width, width)) * 0.02).astype(np.float16), "w2")
    nodes, x = [], "x"
    for i in range(4):
        nodes += [helper.make_node("MatMul", [x, "w1"], [f"h{i}"]), helper.make_node("MatMul", [f"h{i}", "w2"], [f"x{i}"])]
        x = f"x{i}"
    h = TensorProto.FLOAT16
    save(helper.make_graph(nodes, "matmul", [vi("x", [1, tokens, width], h)], [vi(x, [1, tokens, width], h)], [w1, w2]), "matmul.onnx")
    nodes, q = [], "q"
    for i in range(3):
        nodes.append(helper.make_node("MultiHeadAttention", [q, "k", "v"], [f"o{i}", f"pk{i}", f"pv{i}"], domain="com.microsoft", num_heads=heads))
        q = f"o{i}"
    save(helper.make_graph(nodes, "mha", [vi(n, [1, tokens, width], h) for n in "qkv"], [vi(q, [1, tokens, width], h)]), "mha.onnx", ["com.microsoft"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--text", type=int, default=256, help="real text tokens after masking")
    p.add_argument("--attention", choices=["plain", "fused"], default="fused")
    p.add_argument("--steps", type=int, default=25, help="steps of the timed section")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE decode timing")
    p.add_argument("--bundle-export", action="store_true",
                   help="also export the transformer as a bundle holds it (framefarm_export.onnx_export.export_transformer: "
                        "dynamic T, h, w, L, Tc) into OUT/bundle-form/, with torch.json and step.safetensors beside it")
    a = p.parse_args()
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    cfg = dict(heads=24, head_dim=128, double=a.double, single=a.single)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=a.double,
        num_single_layers=a.single, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
        image_condition_type=None, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True,
    ).eval()
    # Random weights of a sane scale (the default init leaves some projections at zero).
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() >= 2:
                torch.nn.init.normal_(prm, std=0.02)
    params = sum(p.numel() for p in model.parameters())

    lh, lw, w = a.height // 8, a.width // 8, a.window
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 256)
    mask[:, : a.text] = 1
    inputs = {
        "hidden_states": torch.randn(1, 16, w, lh, lw, generator=g),
        "timestep": torch.tensor([900.0]),
        "encoder_hidden_states": torch.randn(1, 256, 4096, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, 768, generator=g),
        "image_embeds": torch.randn(1, 729, 1152, generator=g),
        "indices_latents": torch.arange(1, 1 + w),
        "guidance": torch.tensor([10000.0]),
        "latents_clean": torch.randn(1, 16, 2, lh, lw, generator=g),
        "indices_latents_clean": torch.tensor([0, w + 1]),
        "latents_history_2x": torch.randn(1, 16, 2, lh, lw, generator=g),
        "indices_latents_history_2x": torch.tensor([w + 2, w + 3]),
        "latents_history_4x": torch.randn(1, 16, 16, lh, lw, generator=g),
        "indices_latents_history_4x": torch.arange(w + 4, w + 20),
    }
    tokens_img = w * (lh // 2) * (lw // 2) + 2 * (lh // 2) * (lw // 2) + (lh // 4) * (lw // 4) + 4 * (lh // 8) * (lw // 8)
    tokens_txt = a.text + 729
    flops = step_flops(cfg, tokens_img, tokens_txt)

    dev = torch.device("cuda")
    m16 = model.to(dev, torch.bfloat16)
    cuda_in = {k: (v.to(dev, torch.bfloat16) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        run = lambda: m16(**cuda_in, return_dict=False)[0]
        ms = median_ms(run)
        out_bf16 = run().float().cpu()
    peak = torch.cuda.max_memory_allocated() / 2**30

    # A whole section: --steps transformer calls with the flow-match Euler update in float32, plus
    # the history packing the pipeline does before it (split/cat of the history latents).
    sigmas = torch.linspace(1.0, 0.0, a.steps + 1)
    history = torch.randn(1, 16, 19, lh, lw, generator=g).to(dev)

    def section():
        clean_1x, h2, h4 = history[:, :, :19].split([1, 2, 16], dim=2)
        latents_clean = torch.cat([cuda_in["latents_clean"][:, :, :1].float(), clean_1x], dim=2).to(torch.bfloat16)
        kw = dict(cuda_in, latents_clean=latents_clean, latents_history_2x=h2.to(torch.bfloat16), latents_history_4x=h4.to(torch.bfloat16))
        lat = cuda_in["hidden_states"].float()
        for i in range(a.steps):
            kw["hidden_states"] = lat.to(torch.bfloat16)
            kw["timestep"] = torch.full((1,), float(sigmas[i]) * 1000, device=dev, dtype=torch.bfloat16)
            pred = m16(**kw, return_dict=False)[0].float()
            lat = lat + (float(sigmas[i + 1]) - float(sigmas[i])) * pred
        return torch.cat([lat, history], dim=2)

    with torch.no_grad():
        section_ms = median_ms(section, warmup=1, reps=3)
    vae_ms = vae_peak = None
    vae_latent_frames = 2 * w
    if not a.no_vae:
        from diffusers import AutoencoderKLHunyuanVideo

        m16.to("cpu")
        torch.cuda.empty_cache()
        vae = AutoencoderKLHunyuanVideo().eval().to(dev, torch.float16)
        z = torch.randn(1, 16, vae_latent_frames, lh, lw, device=dev, dtype=torch.float16)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            vae_ms = median_ms(lambda: vae.decode(z).sample, warmup=1, reps=3)
        vae_peak = torch.cuda.max_memory_allocated() / 2**30
        del vae, z
        torch.cuda.empty_cache()
        m16.to(dev)
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm_ms = median_ms(lambda: x @ y)
    ceiling = 2 * 8192**3 / (mm_ms / 1e3) / 1e12
    del x, y

    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "params": params, "config": cfg,
        "latent": [w, lh, lw], "tokens_image": tokens_img, "tokens_text": tokens_txt, "step_flops": flops,
        "torch_bf16_step_ms": ms, "torch_tflops": flops / (ms / 1e3) / 1e12, "torch_peak_gib": peak,
        "bf16_matmul_ceiling_tflops": ceiling, "attention": a.attention,
        "steps": a.steps, "torch_bf16_section_ms": section_ms,
        "vae_latent_frames": vae_latent_frames, "torch_fp16_vae_decode_ms": vae_ms, "torch_vae_peak_gib": vae_peak,
    }
    # The gpu-node side: the same weights exported in fp16 by framefarm's exporter (static shapes).
    m16h = model.to("cpu", torch.float32)
    from framefarm_export import wrappers
    from framefarm_export.export_patches import translation_table

    t0 = time.time()
    wrapper = wrappers.Transformer(m16h.to(dev, torch.float16), torch.float16).eval()
    json.dump(report, open(os.path.join(a.out, "torch.json"), "w"), indent=1)
    print(json.dumps(report, indent=1), flush=True)
    # Fused: MultiHeadAttention with its present_key/value outputs (see export_patches), else without.
    for present in (True, False):
        try:
            program = torch.onnx.export(wrapper, tuple(v.to(dev) for v in inputs.values()), input_names=list(inputs), output_names=["noise_pred"],
                                        dynamo=True, optimize=True, custom_translation_table=translation_table(a.attention, present))
            report["mha_present_outputs"] = present and a.attention == "fused"
            break
        except Exception as e:  # noqa: BLE001
            if not present or a.attention == "plain":
                raise
            print(f"fused export with present outputs failed ({type(e).__name__}: {str(e)[:2000]}); trying without", flush=True)
    onnx_path = os.path.join(a.out, "transformer.onnx")
    program.save(onnx_path, external_data=True)
    export_s = time.time() - t0
    ops = {}
    import onnx

    for node in onnx.load(onnx_path, load_external_data=False).graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops[key] = ops.get(key, 0) + 1
    helper_graphs(a.out, inputs, tokens_img + tokens_txt)
    import resource

    # Peak host memory of this process so far (model build, PyTorch timing, export): what an export host needs.
    report.update(onnx_export_seconds=export_s, onnx_ops=dict(sorted(ops.items())),
                  peak_host_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1))
    with torch.no_grad():
        out_fp16 = wrapper(*[v.to(dev) for v in inputs.values()]).float().cpu()

    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "torch_bf16_out": out_bf16, "torch_fp16_out": out_fp16}, os.path.join(a.out, "step.safetensors"))
    json.dump(report, open(os.path.join(a.out, "torch.json"), "w"), indent=1)
    print(json.dumps(report, indent=1), flush=True)
    if a.bundle_export:
        import shutil
        import types

        from framefarm_export import onnx_export

        d = os.path.join(a.out, "bundle-form")
        os.makedirs(d, exist_ok=True)
        # export_transformer traces on the CPU (fake tensors); the image-token count comes from the
        # SigLIP config, 27 x 27 = 729 patches for flux_redux's 378 / 14.
        siglip = types.SimpleNamespace(config=types.SimpleNamespace(image_size=378, patch_size=14))
        t0 = time.time()
        ext, axes = onnx_export.export_transformer(types.SimpleNamespace(transformer=model.to("cpu", torch.float16), image_encoder=siglip), d,
                                                   torch.float16, 256, a.attention)
        print(f"bundle-form export: {axes}, external data {ext}, {time.time() - t0:.0f} s", flush=True)
        for f in ("torch.json", "step.safetensors"):
            shutil.copy(os.path.join(a.out, f), d)


if __name__ == "__main__":
    main()
