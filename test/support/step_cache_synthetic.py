"""A miniature transformer graph shaped like the exporter's in float16 (test/unit/teacache.test.ts):
the packed hidden states and text tokens, block 0's AdaLayerNormZero modulations found by their
parameter names, one block, the crop and norm_out/proj_out. Written as transformer.onnx, then cut
by framefarm_export.step_cache_graphs into the step caches' graphs in OUT, beside modulated.onnx (block
0's modulated input as float32, for the test's own relative L1).

    python3 step_cache_synthetic.py OUT
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh

from framefarm_export.step_cache_graphs import _modulated, _subgraph, split

H = T.FLOAT16
D = 8


def build(path):
    rng = np.random.default_rng(7)
    inits = []

    def w(name, shape, scale=0.3):
        inits.append(nh.from_array((rng.standard_normal(shape) * scale).astype(np.float16), name))
        return name

    def c64(name, values):
        inits.append(nh.from_array(np.array(values, np.int64), name))
        return name

    one = "one"
    inits.append(nh.from_array(np.array(1.0, np.float16), one))
    inits.append(nh.from_array(np.ones(D, np.float16), "ln_scale"))
    n = []

    def node(op, ins, outs, **kw):
        n.append(helper.make_node(op, ins, outs, name=f"node_{outs[0]}", **kw))
        return outs[0]

    def ada(x, weight, chunks, prefix):
        """LayerNorm(x) * (1 + scale) + shift, scale and shift from Gemm(silu(temb)) split in `chunks`."""
        g = node("Gemm", ["silu", w(weight, [D, chunks * D]), w(f"{weight[:-6]}bias", [chunks * D])], [f"{prefix}_linear"])
        parts = [f"{prefix}_split_{i}" for i in range(chunks)]
        node("Split", [g, c64(f"{prefix}_sizes", [D] * chunks)], parts, axis=1)
        ln = node("LayerNormalization", [x, "ln_scale"], [f"{prefix}_ln"], axis=-1, epsilon=1e-6)
        return parts, ln

    node("Cast", ["hidden_states"], ["hs16"], to=H)
    node("Cast", ["latents_clean"], ["lc16"], to=H)
    node("Concat", ["lc16", "hs16"], ["packed"], axis=1)
    node("Cast", ["encoder_hidden_states"], ["ehs16"], to=H)
    node("MatMul", ["ehs16", w("model.context_embedder.weight", [D, D])], ["enc0"])
    node("Cast", ["timestep"], ["t16"], to=H)
    node("MatMul", ["t16", w("model.time_text_embed.weight", [D, D])], ["temb"])
    node("Sigmoid", ["temb"], ["temb_sig"])
    node("Mul", ["temb", "temb_sig"], ["silu"])
    axes1 = c64("axes1", [1])

    def modulate(x, weight, prefix, out):
        """Block 0's AdaLayerNormZero: LayerNorm(x) * (1 + scale_msa) + shift_msa; the six chunks."""
        parts, normed = ada(x, weight, 6, prefix)
        node("Unsqueeze", [parts[1], axes1], [f"{prefix}_scale_u"])
        node("Add", [f"{prefix}_scale_u", one], [f"{prefix}_scale"])
        node("Mul", [normed, f"{prefix}_scale"], [f"{prefix}_mul"])
        node("Unsqueeze", [parts[0], axes1], [f"{prefix}_shift"])
        node("Add", [f"{prefix}_mul", f"{prefix}_shift"], [out])
        return parts

    s = modulate("packed", "model.transformer_blocks.0.norm1.linear.weight", "n1", "modulated")
    modulate("enc0", "model.transformer_blocks.0.norm1_context.linear.weight", "n1c", "cmodulated")

    node("MatMul", ["modulated", w("model.transformer_blocks.0.attn.weight", [D, D])], ["attn"])
    node("Unsqueeze", [s[2], axes1], ["gate"])
    node("Mul", ["attn", "gate"], ["gated"])
    node("Add", ["packed", "gated"], ["h1"])
    node("MatMul", ["cmodulated", w("model.transformer_blocks.0.attn.add_weight", [D, D])], ["cattn"])
    node("Add", ["enc0", "cattn"], ["e1"])
    node("Concat", ["h1", "e1"], ["joint"], axis=1)
    node("Slice", ["joint", c64("zero", [0]), c64("minus_text", [-3]), axes1], ["hidden_after"])
    node("Slice", ["hidden_after", c64("minus_ctx", [-4]), c64("end", [2**62]), axes1], ["crop"])

    o, oln = ada("crop", "model.norm_out.linear.weight", 2, "no")
    node("Add", [o[0], one], ["no_scale"])
    node("Unsqueeze", ["no_scale", axes1], ["no_scale_u"])
    node("Mul", [oln, "no_scale_u"], ["no_mul"])
    node("Unsqueeze", [o[1], axes1], ["no_shift"])
    node("Add", ["no_mul", "no_shift"], ["no_out"])
    node("MatMul", ["no_out", w("model.proj_out.weight", [D, 4])], ["proj"])
    node("Cast", ["proj"], ["noise_pred"], to=T.FLOAT)

    f = lambda name, shape: helper.make_tensor_value_info(name, T.FLOAT, shape)
    graph = helper.make_graph(
        n,
        "synthetic",
        [f("hidden_states", [1, 4, D]), f("latents_clean", [1, 2, D]), f("encoder_hidden_states", [1, 3, D]), f("timestep", [1, D])],
        [f("noise_pred", [1, 4, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, path)


def main(out):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "transformer.onnx")
    build(path)
    graphs, modulated_dtype = split(path)
    for name, m in graphs.items():
        onnx.save(m, os.path.join(out, f"{name}.onnx"))
    model = onnx.load(path)
    _, modulated = _modulated(model.graph, "model.transformer_blocks.0.norm1.linear.weight")
    cast = helper.make_node("Cast", [modulated], ["modulated_input"], to=T.FLOAT)
    vi = helper.make_tensor_value_info("modulated_input", T.FLOAT, None)
    onnx.save(_subgraph(model, ["modulated_input"], (), [cast], [vi]), os.path.join(out, "modulated.onnx"))
    print(modulated_dtype)


if __name__ == "__main__":
    main(sys.argv[1])
