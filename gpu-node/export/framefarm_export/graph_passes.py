"""Rewrites of exported ONNX graphs that keep their values and change which GPU kernels run them.

torch.onnx writes GroupNorm as Reshape([N, G, -1]) -> InstanceNormalization -> Reshape -> Mul ->
Add. onnxruntime's CUDA provider runs that InstanceNormalization as a cuDNN batch norm over G
"channels" of C/G x T x H x W values each: 32 channels for the HunyuanVideo VAE, so a few dozen
thread blocks stream hundreds of megabytes each at full resolution. `decompose_group_norms`
computes the same statistics with ReduceMean (row reductions that spread each row over many blocks)
in float32, as torch's GroupNorm accumulates, and casts back to the graph's dtype.

  python -m framefarm_export.graph_passes IN.onnx OUT.onnx
  python -m framefarm_export.graph_passes --bundle DIR     (rewrites DIR's VAE graphs, updates the manifest)
"""

from __future__ import annotations

import os
import sys

import numpy as np


def _const(graph, name, array):
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def _initializer(graph, name):
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _reshape_rank(graph, producer) -> int | None:
    """Rank of a Reshape's output when its shape is an initializer or a Constant."""
    if producer is None or producer.op_type != "Reshape":
        return None
    shape = _initializer(graph, producer.input[1])
    if shape is None:
        for n in graph.node:
            if n.op_type == "Constant" and n.output[0] == producer.input[1]:
                from onnx import numpy_helper

                shape = numpy_helper.to_array(n.attribute[0].t)
    return None if shape is None else int(np.asarray(shape).size)


def decompose_group_norms(model) -> int:
    """Replaces each rank-3 InstanceNormalization (GroupNorm's) in the main graph; returns how many."""
    from onnx import TensorProto, helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    out_nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "InstanceNormalization" or _reshape_rank(graph, producers.get(node.input[0])) != 3:
            out_nodes.append(node)
            continue
        x, scale, bias = node.input
        y = node.output[0]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"{y}__gn"
        axes = _const(graph, p + "_axes", np.array([2], dtype=np.int64))
        nodes = [
            helper.make_node("Cast", [x], [p + "_x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", [p + "_x", axes], [p + "_mean"], keepdims=1),
            helper.make_node("Sub", [p + "_x", p + "_mean"], [p + "_d"]),
            helper.make_node("Mul", [p + "_d", p + "_d"], [p + "_d2"]),
            helper.make_node("ReduceMean", [p + "_d2", axes], [p + "_var"], keepdims=1),
            helper.make_node("Add", [p + "_var", _const(graph, p + "_eps", np.array(eps, dtype=np.float32))], [p + "_ve"]),
            helper.make_node("Sqrt", [p + "_ve"], [p + "_std"]),
            helper.make_node("Div", [p + "_d", p + "_std"], [p + "_n"]),
        ]
        last = p + "_n"
        s, b = _initializer(graph, scale), _initializer(graph, bias)
        if s is None or not np.all(s == 1):
            nodes.append(helper.make_node("Cast", [scale], [p + "_s"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Unsqueeze", [p + "_s", _const(graph, p + "_sa", np.array([-1], dtype=np.int64))], [p + "_s3"]))
            nodes.append(helper.make_node("Mul", [last, p + "_s3"], [p + "_ns"]))
            last = p + "_ns"
        if b is None or not np.all(b == 0):
            nodes.append(helper.make_node("Cast", [bias], [p + "_b"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Unsqueeze", [p + "_b", _const(graph, p + "_ba", np.array([-1], dtype=np.int64))], [p + "_b3"]))
            nodes.append(helper.make_node("Add", [last, p + "_b3"], [p + "_nb"]))
            last = p + "_nb"
        nodes.append(helper.make_node("CastLike", [last, x], [y]))
        out_nodes.extend(nodes)
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return count


def rewrite_bundle_graphs(bundle: str) -> dict:
    """Rewrites the VAE graph files of a bundle being exported (before its manifest is written)."""
    import onnx

    done = {}
    for name in ("vae_decoder", "vae_encoder"):
        file = os.path.join(bundle, f"{name}.onnx")
        model = onnx.load(file)
        done[name] = apply_cuda_passes(model)
        onnx.save(model, file)
    return done


def rewrite_bundle(bundle: str) -> dict:
    """Applies decompose_group_norms to a bundle's VAE graphs in place and records it in the manifest."""
    import json
    import os

    import onnx

    from .manifest import sha256

    path = os.path.join(bundle, "framefarm-bundle.json")
    manifest = json.load(open(path, encoding="utf-8"))
    done = {}
    for name in ("vae_decoder", "vae_encoder"):
        entry = manifest["components"][name]
        file = os.path.join(bundle, entry["file"])
        model = onnx.load(file)
        done[name] = apply_cuda_passes(model)
        onnx.save(model, file)
        entry["sha256"] = sha256(file)
        entry["graph_passes"] = sorted(set(entry.get("graph_passes", [])) | {k for k, v in done[name].items() if v})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return done


def _const_value(graph, name):
    v = _initializer(graph, name)
    if v is None:
        from onnx import numpy_helper

        for n in graph.node:
            if n.op_type == "Constant" and n.output[0] == name:
                v = numpy_helper.to_array(n.attribute[0].t)
    return v


def replace_edge_pads(model) -> int:
    """Pad(mode=edge) with constant pads -> per padded axis, Concat of edge Slices and the input.

    HunyuanVideo's causal convolutions pad every input with replicate padding (2 frames in front,
    1 pixel each side). onnxruntime's CUDA Pad kernel indexes each element with 64-bit divisions
    over all five axes: measured on an H200, 29 ms per full-resolution call and 74 % of a VAE
    decode tile's GPU time, against ~1 ms for a copy of the same bytes. Concat and Slice are copies,
    and edge padding is separable by axis, so the result is bit-identical."""
    from onnx import helper

    graph = model.graph
    out_nodes = []
    count = 0
    big = np.iinfo(np.int64).max
    for node in graph.node:
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        pads = _const_value(graph, node.input[1]) if node.op_type == "Pad" and len(node.input) > 1 else None
        if node.op_type != "Pad" or mode != "edge" or pads is None or (len(node.input) > 3 and node.input[3]) or np.any(pads < 0):
            out_nodes.append(node)
            continue
        pads = [int(v) for v in np.asarray(pads).reshape(-1)]
        rank = len(pads) // 2
        cur = node.input[0]
        p = f"{node.output[0]}__edge"
        axes_done = [a for a in range(rank) if pads[a] or pads[a + rank]]
        for i, a in enumerate(axes_done):
            before, after = pads[a], pads[a + rank]
            ax = _const(graph, f"{p}_ax{a}", np.array([a], dtype=np.int64))
            pieces = []
            if before:
                first = f"{p}_first{a}"
                out_nodes.append(helper.make_node("Slice", [cur, _const(graph, f"{p}_s0_{a}", np.array([0], dtype=np.int64)),
                                                            _const(graph, f"{p}_e0_{a}", np.array([1], dtype=np.int64)), ax], [first]))
                pieces += [first] * before
            pieces.append(cur)
            if after:
                last = f"{p}_last{a}"
                out_nodes.append(helper.make_node("Slice", [cur, _const(graph, f"{p}_s1_{a}", np.array([-1], dtype=np.int64)),
                                                            _const(graph, f"{p}_e1_{a}", np.array([big], dtype=np.int64)), ax], [last]))
                pieces += [last] * after
            nxt = node.output[0] if i == len(axes_done) - 1 else f"{p}_cat{a}"
            out_nodes.append(helper.make_node("Concat", pieces, [nxt], axis=a))
            cur = nxt
        if not axes_done:
            out_nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]]))
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    _drop_unused_initializers(graph)
    return count


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def apply_cuda_passes(model) -> dict:
    return {"edge_pad_concat": replace_edge_pads(model), "group_norm_reduce_mean": decompose_group_norms(model)}


def main(argv=None) -> int:
    import onnx

    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--bundle":
        print(f"{argv[1]}: decomposed {rewrite_bundle(argv[1])}", flush=True)
        return 0
    if len(argv) != 2:
        raise SystemExit("usage: python -m framefarm_export.graph_passes IN.onnx OUT.onnx")
    model = onnx.load(argv[0])
    only = os.environ.get("FRAMEFARM_GRAPH_PASSES")
    done = apply_cuda_passes(model) if only is None else {"edge_pad_concat": replace_edge_pads(model)} if only == "pad" else {"group_norm_reduce_mean": decompose_group_norms(model)}
    onnx.save(model, argv[1])
    print(f"{argv[1]}: rewritten {done}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
