"""Splits an exported transformer.onnx into the three graphs that TeaCache (--cache teacache) needs.

lllyasviel's FramePack (diffusers_helper/models/hunyuan_video_packed.py, initialize_teacache)
measures, per transformer call, the first block's modulated input (transformer_blocks[0].norm1 of
the packed hidden states with temb) and, on a step it skips, adds the previous call's residual
(hidden after the last block minus hidden before the first) to the hidden states and runs only
norm_out and proj_out. The single graph cannot stop half-way, so three graphs are cut out of it:

  transformer_head  every transformer input and previous_modulated_input -> hidden_in (packed
                    hidden states before block 0), encoder_in (the text and image tokens block 0
                    takes), modulated_input, and modulated_l1: [mean |modulated - previous|,
                    mean |previous|], the difference rounded to the modulated input's dtype first
                    (TeaCache's relative L1 without bringing both tensors to the host's loop)
  transformer_body  hidden_in, encoder_in and the small inputs it reads (timestep, guidance, pooled
                    projections, indices, latents for their shapes) -> noise_pred, residual
  transformer_tail  hidden_out (hidden after the last block) and the small inputs -> noise_pred

Every node is copied from the single graph unchanged, so a computed step's noise_pred is the same
arithmetic as transformer.onnx's. The body and tail recompute the cheap conditioning (temb, rope)
from the graph inputs rather than taking hundreds of per-block modulation tensors from the head;
the head recomputes block 0's norm1 (one LayerNorm) that the body computes again.

The cut points are found by the parameters' names, which the exporter keeps:
  hidden_in / modulated_input: the LayerNormalization whose output is scaled by
    model.transformer_blocks.0.norm1.linear's (1 + scale_msa) and shifted by shift_msa;
  encoder_in: the same for model.transformer_blocks.0.norm1_context;
  hidden_out: the input of the Slice (the crop to the section's own tokens) that feeds norm_out's
    LayerNormalization, i.e. every token after the last single block, text tokens dropped.

Runs on any onnx >= 1.12 (Debian's python3-onnx works):
  python -m framefarm_export.teacache_split --bundle test/fixtures/tiny-bundle
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

HEAD, BODY, TAIL = "transformer_head", "transformer_body", "transformer_tail"
HEAD_OUTPUTS = ["hidden_in", "encoder_in", "modulated_input"]
PREVIOUS = "previous_modulated_input"
L1 = "modulated_l1"
BODY_OUTPUTS = ["noise_pred", "residual"]
TAIL_OUTPUTS = ["noise_pred"]


def _producers(graph):
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph):
    out = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _modulated(graph, weight):
    """(input of the LayerNorm, modulated output) of the AdaLayerNormZero whose linear has `weight`."""
    prod, cons = _producers(graph), _consumers(graph)
    gemm = [n for n in graph.node if weight in n.input]
    if len(gemm) != 1:
        raise SystemExit(f"error: expected one node reading {weight}, found {len(gemm)}")
    split = cons[gemm[0].output[0]]
    if len(split) != 1 or split[0].op_type != "Split":
        raise SystemExit(f"error: {weight}: its linear does not feed one Split")
    shift, scale = split[0].output[0], split[0].output[1]
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        ln = [prod.get(_uncast(prod, i)) for i in mul.input]
        norm = next((p for p in ln if p is not None and p.op_type == "LayerNormalization"), None)
        other = next((i for i, p in zip(mul.input, ln) if p is None or p.op_type != "LayerNormalization"), None)
        if norm is None or other is None or not _reads(prod, other, scale):
            continue
        for add in cons.get(mul.output[0], []):
            if add.op_type == "Add" and any(_reads(prod, i, shift) for i in add.input if i != mul.output[0]):
                return _uncast(prod, norm.input[0]), add.output[0]
    raise SystemExit(f"error: no LayerNorm * (1 + scale) + shift found for {weight}")


def _uncast(prod, name):
    """The tensor before any Cast nodes (a half-precision export may norm in float32)."""
    while name in prod and prod[name].op_type == "Cast":
        name = prod[name].input[0]
    return name


def _reads(prod, name, target, depth=3):
    """True if `name` is `target` or computed from it through at most `depth` nodes (Unsqueeze, Add 1)."""
    if name == target:
        return True
    node = prod.get(name)
    if node is None or depth == 0:
        return False
    return any(_reads(prod, i, target, depth - 1) for i in node.input)


def _hidden_out(graph):
    prod = _producers(graph)
    gemm = [n for n in graph.node if "model.norm_out.linear.weight" in n.input]
    cons = _consumers(graph)
    split = cons[gemm[0].output[0]][0]
    scale = split.output[0]
    for n in graph.node:
        if n.op_type != "LayerNormalization":
            continue
        if any(m.op_type == "Mul" and any(_reads(prod, i, scale) for i in m.input) for m in cons.get(n.output[0], [])):
            crop = prod.get(_uncast(prod, n.input[0]))
            if crop is None or crop.op_type != "Slice":
                raise SystemExit("error: norm_out's LayerNorm does not read a Slice")
            return crop.input[0]
    raise SystemExit("error: norm_out's LayerNormalization not found")


def _rename(model, old, new):
    g = model.graph
    for n in g.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for v in g.value_info:
        if v.name == old:
            v.name = new


def _subgraph(model, outputs, stop, extra_nodes=(), extra_vi=()):
    """The nodes computing `outputs` from graph inputs, initializers and the `stop` tensors
    (which become inputs), in the source's topological order."""
    g = model.graph
    prod = _producers(g)
    inits = {i.name for i in g.initializer}
    graph_inputs = {i.name: i for i in g.input}
    vi = {v.name: v for v in list(g.value_info) + list(g.output) + list(extra_vi)}
    for n in extra_nodes:
        for o in n.output:
            prod[o] = n
    needed, inputs, seen = [], [], set()
    stack = list(outputs)
    keep = set()
    while stack:
        name = stack.pop()
        if name in seen or name == "":
            continue
        seen.add(name)
        if name in stop or name in graph_inputs:
            inputs.append(name)
            continue
        if name in inits:
            continue
        node = prod[name]
        if id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(node.input)
    order = list(g.node) + list(extra_nodes)
    needed = [n for n in order if id(n) in keep]
    used = {i for n in needed for i in n.input}
    # Inputs in the single graph's order first, then the cut tensors.
    ins = [graph_inputs[i] for i in graph_inputs if i in inputs]
    ins += [vi[s] for s in stop if s in inputs]
    outs = [vi[o] for o in outputs]
    graph = helper.make_graph(
        needed,
        g.name,
        ins,
        outs,
        initializer=[i for i in g.initializer if i.name in used],
        value_info=[v for v in g.value_info if v.name in {o for n in needed for o in n.output} and v.name not in outputs],
    )
    m = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="framefarm_export.teacache_split")
    m.ir_version = model.ir_version
    return m


def split(transformer_path):
    """Returns {name: ModelProto} for the head, body and tail."""
    model = onnx.load(transformer_path)
    g = model.graph
    hidden_in, modulated = _modulated(g, "model.transformer_blocks.0.norm1.linear.weight")
    encoder_in, _ = _modulated(g, "model.transformer_blocks.0.norm1_context.linear.weight")
    hidden_out = _hidden_out(g)
    vi = {v.name: v for v in g.value_info}
    cut = {"hidden_in": hidden_in, "encoder_in": encoder_in, "modulated_input": modulated, "hidden_out": hidden_out}
    if any(vi[t].type.tensor_type.elem_type != onnx.TensorProto.FLOAT for t in cut.values()):
        return _split_cast(model, cut)
    for new, old in cut.items():
        _rename(model, old, new)
    vi = {v.name: v for v in g.value_info}
    sub = helper.make_node("Sub", ["hidden_out", "hidden_in"], ["residual"], name="teacache_residual")
    residual_vi = onnx.ValueInfoProto()
    residual_vi.CopyFrom(vi["hidden_out"])
    residual_vi.name = "residual"
    head = _subgraph(model, HEAD_OUTPUTS, set())
    body = _subgraph(model, BODY_OUTPUTS, ["hidden_in", "encoder_in"], [sub], [residual_vi])
    tail = _subgraph(model, TAIL_OUTPUTS, ["hidden_out"])
    _add_l1(head, onnx.TensorProto.FLOAT)
    return {HEAD: head, BODY: body, TAIL: tail}


def _add_l1(head, dtype):
    """Adds previous_modulated_input and modulated_l1 to the head (see the module's docstring).
    The float32 modulated input holds values of `dtype` exactly; the difference is taken in float32
    and rounded to `dtype`, as torch's half arithmetic does, and the means accumulate in float32, as
    torch's do. On a call with no previous input the runtime feeds a [1, 1, 1] zero (broadcast)."""
    g = head.graph
    f32 = onnx.TensorProto.FLOAT
    out = next(o for o in g.output if o.name == "modulated_input")
    prev = onnx.ValueInfoProto()
    prev.CopyFrom(out)
    prev.name = PREVIOUS
    for d in prev.type.tensor_type.shape.dim:
        d.ClearField("dim_value")
        d.dim_param = "previous_" + (d.dim_param or "dim")
    g.input.append(prev)
    diff = "teacache_l1_diff"
    nodes = [helper.make_node("Sub", ["modulated_input", PREVIOUS], [diff], name="teacache_l1_sub")]
    if dtype != f32:
        nodes += [
            helper.make_node("Cast", [diff], [diff + "_rounded"], to=dtype, name="teacache_l1_round"),
            helper.make_node("Cast", [diff + "_rounded"], [diff + "_f32"], to=f32, name="teacache_l1_back"),
        ]
        diff = diff + "_f32"
    nodes += [
        helper.make_node("Abs", [diff], ["teacache_l1_abs"], name="teacache_l1_abs"),
        helper.make_node("ReduceMean", ["teacache_l1_abs"], ["teacache_l1_mean"], keepdims=1, name="teacache_l1_mean"),
        helper.make_node("Abs", [PREVIOUS], ["teacache_norm_abs"], name="teacache_norm_abs"),
        helper.make_node("ReduceMean", ["teacache_norm_abs"], ["teacache_norm_mean"], keepdims=1, name="teacache_norm_mean"),
        helper.make_node("Concat", ["teacache_l1_mean", "teacache_norm_mean"], ["teacache_l1_pair"], axis=0,
                         name="teacache_l1_concat"),
        helper.make_node("Reshape", ["teacache_l1_pair", "teacache_l1_shape"], [L1], name="teacache_l1_reshape"),
    ]
    g.node.extend(nodes)
    g.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "teacache_l1_shape"))
    g.output.append(helper.make_tensor_value_info(L1, f32, [2]))


def _f32_vi(vi, name, new):
    v = onnx.ValueInfoProto()
    v.CopyFrom(vi[name])
    v.name = new
    v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return v


def _split_cast(model, cut):
    """A half-precision transformer: each tensor between the parts that is not float32 crosses as
    float32 (the runtime's I/O), cast from and back to its own dtype at the boundaries, which is
    exact both ways. The residual is the difference in the hidden states' dtype, then cast. The
    modulated input's dtype goes into the head's manifest entry (`modulated_dtype`) so that the
    runtime rounds TeaCache's relative L1 as torch does in that dtype."""
    g = model.graph
    vi = {v.name: v for v in g.value_info}
    f32 = onnx.TensorProto.FLOAT
    names = {f32: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    dtype = {n: vi[t].type.tensor_type.elem_type for n, t in cut.items()}
    for n, d in dtype.items():
        if d not in names:
            raise SystemExit(f"error: {n} is of element type {d}, neither float32, float16 nor bfloat16")

    def to_f32(n, src, dst):  # a node giving `dst` (float32) from `src` (dtype of cut n)
        if dtype[n] == f32:
            return helper.make_node("Identity", [src], [dst], name=f"teacache_{dst}")
        return helper.make_node("Cast", [src], [dst], to=f32, name=f"teacache_{dst}_to_f32")

    def from_f32(n, src, dst):
        if dtype[n] == f32:
            return helper.make_node("Identity", [src], [dst], name=f"teacache_{dst}_in")
        return helper.make_node("Cast", [src], [dst], to=dtype[n], name=f"teacache_{src}_from_f32")

    head = _subgraph(model, HEAD_OUTPUTS, set(), [to_f32(n, cut[n], n) for n in HEAD_OUTPUTS],
                     [_f32_vi(vi, cut[n], n) for n in HEAD_OUTPUTS])
    res = "teacache_residual_compute"
    res_vi = onnx.ValueInfoProto()
    res_vi.CopyFrom(vi[cut["hidden_out"]])
    res_vi.name = res
    body_nodes = [
        from_f32("hidden_in", "hidden_in", cut["hidden_in"]),
        from_f32("encoder_in", "encoder_in", cut["encoder_in"]),
        helper.make_node("Sub", [cut["hidden_out"], cut["hidden_in"]], [res], name="teacache_residual"),
        to_f32("hidden_out", res, "residual"),
    ]
    body_vi = [_f32_vi(vi, cut["hidden_in"], "hidden_in"), _f32_vi(vi, cut["encoder_in"], "encoder_in"), res_vi,
               _f32_vi(vi, cut["hidden_out"], "residual")]
    body = _subgraph(model, BODY_OUTPUTS, ["hidden_in", "encoder_in"], body_nodes, body_vi)
    tail = _subgraph(model, TAIL_OUTPUTS, ["hidden_out"], [from_f32("hidden_out", "hidden_out", cut["hidden_out"])],
                     [_f32_vi(vi, cut["hidden_out"], "hidden_out")])
    head.metadata_props.add(key="framefarm.modulated_dtype", value=names[dtype["modulated_input"]])
    _add_l1(head, dtype["modulated_input"])
    return {HEAD: head, BODY: body, TAIL: tail}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(bundle):
    """Writes the three graphs next to transformer.onnx and names them in the manifest."""
    manifest_path = os.path.join(bundle, "framefarm-bundle.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    entry = manifest["components"]["transformer"]
    external = bool(entry.get("external_data"))
    # onnx.load reads the external data file beside the graph: the weights are held in memory once,
    # and each part is written with its own (the body's is about as large as the transformer's).
    graphs = split(os.path.join(bundle, entry["file"]))
    for name, m in graphs.items():
        file = f"{name}.onnx"
        data = f"{file}.data" if external else None
        if data is not None and os.path.exists(os.path.join(bundle, data)):
            os.remove(os.path.join(bundle, data))  # save_model appends to an existing file
        onnx.save_model(m, os.path.join(bundle, file), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data)
        manifest["components"][name] = {
            "file": file,
            "external_data": data,
            "inputs": [i.name for i in m.graph.input],
            "outputs": [o.name for o in m.graph.output],
            "sha256": _sha256(os.path.join(bundle, file)),
        }
        meta = {p.key: p.value for p in m.metadata_props}
        if "framefarm.modulated_dtype" in meta:
            manifest["components"][name]["modulated_dtype"] = meta["framefarm.modulated_dtype"]
        print(f"  {name}: {len(m.graph.node)} nodes, inputs {[i.name for i in m.graph.input]}", flush=True)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="framefarm_export.teacache_split", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder holding transformer.onnx and framefarm-bundle.json")
    args = p.parse_args(argv)
    write(args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
