"""Writes the graphs that the step caches (--cache teacache | magcache) run, from an exported transformer.onnx.

lllyasviel's FramePack (diffusers_helper/models/hunyuan_video_packed.py, initialize_teacache) and
MagCache4FramePack decide per transformer call whether the blocks run. On a call that runs them,
the residual (hidden states after the last block minus before the first) is kept; on a call that
skips them, the kept residual is added to the hidden states and only norm_out and proj_out run.
TeaCache decides from the first block's modulated input (transformer_blocks[0].norm1 of the packed
hidden states with temb) against the previous call's. Three graphs are written:

  transformer_residual  every transformer input -> noise_pred (the single graph's nodes, unchanged)
                        and residual: the section's own tokens of (hidden after the last block -
                        hidden before block 0), in the transformer's own dtype
  transformer_skip      the transformer inputs it reads and residual -> noise_pred: the embeddings,
                        the section's own tokens of the hidden states before block 0 plus residual,
                        norm_out and proj_out
  transformer_change    the inputs block 0's modulated input depends on, and the same inputs of the
                        previous call (named previous_<input>) -> modulated_l1: [mean |modulated -
                        previous modulated|, mean |previous modulated|] in float32, the difference
                        rounded to the modulated input's dtype first, as torch computes it

Nothing but noise_pred and the two means comes back to the host for a decision, and the residual
crosses once per computed call (it stays in the runtime's session worker between the two graphs).
The crop to the section's own tokens commutes with the add (elementwise), so the residual carries
only those tokens: (hidden + residual)[crop] = hidden[crop] + residual[crop].

The cut points are found by the parameters' names, which the exporter keeps:
  hidden before block 0 / modulated input: the LayerNormalization whose output is scaled by
    model.transformer_blocks.0.norm1.linear's (1 + scale_msa) and shifted by shift_msa;
  the crop: the Slice that feeds norm_out's LayerNormalization (every token after the last single
    block, text tokens dropped -> the section's own tokens).

Runs on any onnx >= 1.12 (Debian's python3-onnx works):
  python -m framefarm_export.step_cache_graphs --bundle test/fixtures/tiny-bundle
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

RESIDUAL, SKIP, CHANGE = "transformer_residual", "transformer_skip", "transformer_change"
GRAPHS = (RESIDUAL, SKIP, CHANGE)
# Graphs that earlier versions wrote: removed from a bundle when the new ones are written.
OLD_GRAPHS = ("transformer_head", "transformer_body", "transformer_tail")
RESIDUAL_OUT = "residual"
PREVIOUS = "previous_"
L1 = "modulated_l1"
DTYPE_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}


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


def _crop(graph):
    """The Slice giving the section's own tokens that norm_out's LayerNormalization reads."""
    prod, cons = _producers(graph), _consumers(graph)
    gemm = [n for n in graph.node if "model.norm_out.linear.weight" in n.input]
    if len(gemm) != 1:
        raise SystemExit("error: no node reads model.norm_out.linear.weight")
    scale = cons[gemm[0].output[0]][0].output[0]
    for n in graph.node:
        if n.op_type != "LayerNormalization":
            continue
        if any(m.op_type == "Mul" and any(_reads(prod, i, scale) for i in m.input) for m in cons.get(n.output[0], [])):
            crop = prod.get(_uncast(prod, n.input[0]))
            if crop is None or crop.op_type != "Slice":
                raise SystemExit("error: norm_out's LayerNorm does not read a Slice")
            return crop
    raise SystemExit("error: norm_out's LayerNormalization not found")


def _toposorted(nodes):
    """`nodes` in an order where each node comes after the producers of its inputs (stable)."""
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    done, order = set(), []

    def visit(i):
        if i in done:
            return
        done.add(i)
        for name in nodes[i].input:
            if name in produced:
                visit(produced[name])
        order.append(nodes[i])

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes) + 1000))
    for i in range(len(nodes)):
        visit(i)
    return order


def _subgraph(model, outputs, stop=(), extra_nodes=(), extra_vi=()):
    """The nodes computing `outputs` from graph inputs, initializers and the `stop` tensors (which
    become inputs after the graph's own), in the source's order with `extra_nodes` placed after
    their inputs' producers; an extra node replaces the source's producer of its outputs."""
    g = model.graph
    prod = _producers(g)
    for n in extra_nodes:
        for o in n.output:
            prod[o] = n
    inits = {i.name for i in g.initializer}
    graph_inputs = {i.name: i for i in g.input}
    vi = {v.name: v for v in list(g.value_info) + list(g.output) + list(extra_vi)}
    inputs, seen, keep = set(), set(), set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen or name == "":
            continue
        seen.add(name)
        if name in stop or name in graph_inputs:
            inputs.add(name)
            continue
        if name in inits:
            continue
        node = prod[name]
        if id(node) not in keep:
            keep.add(id(node))
            stack.extend(node.input)
    needed = _toposorted([n for n in list(g.node) + list(extra_nodes) if id(n) in keep])
    used = {i for n in needed for i in n.input}
    made = {o for n in needed for o in n.output}
    ins = [graph_inputs[i] for i in graph_inputs if i in inputs] + [vi[s] for s in stop if s in inputs]
    graph = helper.make_graph(
        needed,
        g.name,
        ins,
        [vi[o] for o in outputs],
        initializer=[i for i in g.initializer if i.name in used],
        value_info=[v for v in list(g.value_info) + list(extra_vi) if v.name in made and v.name not in outputs],
    )
    m = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="framefarm_export.step_cache_graphs")
    m.ir_version = model.ir_version
    return m


def _value_info(vi, name, new, elem_type=None):
    v = onnx.ValueInfoProto()
    v.CopyFrom(vi[name])
    v.name = new
    if elem_type is not None:
        v.type.tensor_type.elem_type = elem_type
    return v


def _dtype_of(vi, name):
    t = vi[name].type.tensor_type.elem_type
    if t not in DTYPE_NAMES:
        raise SystemExit(f"error: {name} is of element type {t}, neither float32, float16 nor bfloat16")
    return t


def split(transformer_path):
    """Returns ({name: ModelProto} for the three graphs, the modulated input's dtype name)."""
    model = onnx.load(transformer_path)
    g = model.graph
    vi = {v.name: v for v in list(g.value_info) + list(g.output)}
    hidden_in, modulated = _modulated(g, "model.transformer_blocks.0.norm1.linear.weight")
    crop = _crop(g)
    cropped = crop.output[0]
    # The section's own tokens of hidden_in: the crop's own Slice, on hidden_in.
    hidden_in_cropped = "teacache_hidden_in_cropped"
    slice_in = helper.make_node("Slice", [hidden_in, *crop.input[1:]], [hidden_in_cropped], name="teacache_crop_hidden_in")
    cropped_vi = [_value_info(vi, cropped, hidden_in_cropped), _value_info(vi, cropped, RESIDUAL_OUT)]

    sub = helper.make_node("Sub", [cropped, hidden_in_cropped], [RESIDUAL_OUT], name="teacache_residual")
    residual = _subgraph(model, ["noise_pred", RESIDUAL_OUT], (), [slice_in, sub], cropped_vi)

    add = helper.make_node("Add", [hidden_in_cropped, RESIDUAL_OUT], [cropped], name="teacache_add_residual")
    skip = _subgraph(model, ["noise_pred"], [RESIDUAL_OUT], [slice_in, add], cropped_vi)
    blocks = [i.name for i in skip.graph.initializer if ".transformer_blocks.1." in i.name or "single_transformer_blocks" in i.name]
    if blocks:
        raise SystemExit(f"error: the skipped call's graph reads the blocks' weights ({blocks[0]}): the cut is wrong")

    dtype = _dtype_of(vi, modulated)
    change = _change(model, modulated, dtype)
    return {RESIDUAL: residual, SKIP: skip, CHANGE: change}, DTYPE_NAMES[dtype]


def _change(model, modulated, dtype):
    """transformer_change: block 0's modulated input from this call's inputs and from the previous
    call's (a renamed copy of the same nodes, sharing the weights), then the two means. The values
    are cast to float32 (exact), subtracted there and the difference rounded to `dtype`, as torch's
    half arithmetic does; the means accumulate in float32, as torch's do."""
    now = _subgraph(model, [modulated])
    g = now.graph
    inits = {i.name for i in g.initializer}

    def renamed(name):
        return name if name == "" or name in inits else PREVIOUS + name

    previous = []
    for n in g.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[:] = [renamed(i) for i in n.input]
        c.output[:] = [renamed(o) for o in n.output]
        c.name = PREVIOUS + n.name
        previous.append(c)
    previous_inputs = []
    for i in g.input:
        v = onnx.ValueInfoProto()
        v.CopyFrom(i)
        v.name = PREVIOUS + i.name
        previous_inputs.append(v)
    f32 = onnx.TensorProto.FLOAT

    def as_f32(name):
        return helper.make_node("Cast", [name], [name + "_f32"], to=f32, name=f"teacache_{name}_f32")

    diff = "teacache_l1_diff"
    nodes = [as_f32(modulated), as_f32(PREVIOUS + modulated),
             helper.make_node("Sub", [modulated + "_f32", PREVIOUS + modulated + "_f32"], [diff], name="teacache_l1_sub")]
    if dtype != f32:
        nodes += [
            helper.make_node("Cast", [diff], [diff + "_rounded"], to=dtype, name="teacache_l1_round"),
            helper.make_node("Cast", [diff + "_rounded"], [diff + "_back"], to=f32, name="teacache_l1_back"),
        ]
        diff = diff + "_back"
    nodes += [
        helper.make_node("Abs", [diff], ["teacache_l1_abs"], name="teacache_l1_abs"),
        helper.make_node("ReduceMean", ["teacache_l1_abs"], ["teacache_l1_mean"], keepdims=1, name="teacache_l1_mean"),
        helper.make_node("Abs", [PREVIOUS + modulated + "_f32"], ["teacache_norm_abs"], name="teacache_norm_abs"),
        helper.make_node("ReduceMean", ["teacache_norm_abs"], ["teacache_norm_mean"], keepdims=1, name="teacache_norm_mean"),
        helper.make_node("Concat", ["teacache_l1_mean", "teacache_norm_mean"], ["teacache_l1_pair"], axis=0,
                         name="teacache_l1_concat"),
        helper.make_node("Reshape", ["teacache_l1_pair", "teacache_l1_shape"], [L1], name="teacache_l1_reshape"),
    ]
    graph = helper.make_graph(
        list(g.node) + previous + nodes,
        g.name,
        list(g.input) + previous_inputs,
        [helper.make_tensor_value_info(L1, f32, [2])],
        initializer=list(g.initializer) + [numpy_helper.from_array(np.array([2], dtype=np.int64), "teacache_l1_shape")],
    )
    m = helper.make_model(graph, opset_imports=list(now.opset_import), producer_name="framefarm_export.step_cache_graphs")
    m.ir_version = now.ir_version
    return m


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(bundle):
    """Writes the three graphs next to transformer.onnx and names them in the manifest (the graphs
    an earlier version wrote, transformer_head/body/tail, are removed)."""
    manifest_path = os.path.join(bundle, "framefarm-bundle.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    entry = manifest["components"]["transformer"]
    external = bool(entry.get("external_data"))
    # onnx.load reads the external data file beside the graph: the weights are held in memory once,
    # and each graph is written with its own (transformer_residual's is as large as the transformer's).
    graphs, modulated_dtype = split(os.path.join(bundle, entry["file"]))
    for old in OLD_GRAPHS:
        gone = manifest["components"].pop(old, None)
        for f in ([gone["file"], gone.get("external_data")] if gone else []):
            if f and os.path.exists(os.path.join(bundle, f)):
                os.remove(os.path.join(bundle, f))
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
        if name == CHANGE:
            manifest["components"][name]["modulated_dtype"] = modulated_dtype
        print(f"  {name}: {len(m.graph.node)} nodes, inputs {[i.name for i in m.graph.input]}", flush=True)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="framefarm_export.step_cache_graphs", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder holding transformer.onnx and framefarm-bundle.json")
    args = p.parse_args(argv)
    write(args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
