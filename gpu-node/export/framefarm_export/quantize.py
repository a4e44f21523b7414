"""Weight-only 8- or 4-bit transformers: a bundle whose transformer graphs fit a 24 GB card.

The 13B transformer in fp16 is ~26 GB of weights. onnxruntime's MatMulNBitsQuantizer replaces
each MatMul whose second input is a constant weight with com.microsoft.MatMulNBits (blockwise
weights, fp16 activations; onnxruntime's CUDA provider runs it), which stores 4-bit weights in a
quarter of the space (8-bit: half) plus one scale per block. Everything else in the bundle is
linked or copied unchanged. The manifest records each quantized component's `weights`
({bits, block_size, symmetric}) and new digest, so a node knows what it loads.

  python -m framefarm_export.quantize --bundle SRC --out DST [--bits 4|8] [--block-size 128]
      [--components transformer,transformer_residual,transformer_skip,transformer_change]
  python -m framefarm_export.quantize --graph SRC.onnx --out DST.onnx [--bits 4|8] ...   (one graph)

Needs the onnxruntime Python package (the GPU machine has it; the quantizer's code is there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import onnx

from .manifest import sha256
from .step_cache_graphs import GRAPHS as STEP_CACHE_GRAPHS

TRANSFORMER_GRAPHS = ("transformer", *STEP_CACHE_GRAPHS)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def quantize_graph(src: str, dst: str, external: bool, bits: int, block_size: int, symmetric: bool) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(src, load_external_data=True)
    before = sum(n.op_type == "MatMul" for n in model.graph.node)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric)
    quantizer.process()
    out = quantizer.model.model
    after = sum(n.op_type == "MatMulNBits" for n in out.graph.node)
    data = os.path.basename(dst) + ".data" if external else None
    if data is not None and os.path.exists(os.path.join(os.path.dirname(dst), data)):
        os.remove(os.path.join(os.path.dirname(dst), data))  # save_model appends to an existing file
    onnx.save_model(out, dst, save_as_external_data=external, all_tensors_to_one_file=True, location=data)
    return {"matmuls": before, "quantized": after, "external_data": data}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="the bundle to read (left as it is)")
    src.add_argument("--graph", help="one graph to quantize instead of a bundle's (its weights as external data beside --out)")
    p.add_argument("--out", required=True, help="the quantized bundle's folder (created), or with --graph the graph's file")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4)
    p.add_argument("--block-size", type=int, default=128, help="weights per scale (a power of two >= 16)")
    p.add_argument("--asymmetric", action="store_true", help="a zero point per block as well as a scale")
    p.add_argument("--components", default=",".join(TRANSFORMER_GRAPHS),
                   help="graphs to quantize (those the bundle lacks are skipped)")
    a = p.parse_args(argv)
    if a.block_size < 16 or a.block_size & (a.block_size - 1):
        raise SystemExit(f"error: --block-size must be a power of two >= 16, got {a.block_size}")
    if a.graph is not None:
        r = quantize_graph(a.graph, a.out, True, a.bits, a.block_size, not a.asymmetric)
        print(json.dumps(r), flush=True)
        return 0
    with open(os.path.join(a.bundle, "framefarm-bundle.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    wanted = [c for c in a.components.split(",") if c in manifest["components"]]
    unknown = [c for c in a.components.split(",") if c not in manifest["components"] and c not in TRANSFORMER_GRAPHS]
    if unknown:
        raise SystemExit(f"error: the bundle has no component {', '.join(unknown)}")
    if not wanted:
        raise SystemExit("error: none of the components to quantize are in the bundle")
    os.makedirs(a.out, exist_ok=True)
    quantized_files = set()
    for name in wanted:
        entry = manifest["components"][name]
        quantized_files.update(f for f in (entry["file"], entry.get("external_data")) if f)
    # Everything else as it is (hard links where the file system allows: no second copy on disk).
    for root, _dirs, files in os.walk(a.bundle):
        rel = os.path.relpath(root, a.bundle)
        os.makedirs(os.path.join(a.out, rel), exist_ok=True)
        for f in files:
            path = os.path.normpath(os.path.join(rel, f))
            if path in quantized_files or path == "framefarm-bundle.json":
                continue
            link_or_copy(os.path.join(root, f), os.path.join(a.out, path))
    report = {}
    for name in wanted:
        entry = manifest["components"][name]
        t0 = time.time()
        r = quantize_graph(os.path.join(a.bundle, entry["file"]), os.path.join(a.out, entry["file"]),
                           entry.get("external_data") is not None, a.bits, a.block_size, not a.asymmetric)
        entry["external_data"] = r["external_data"]
        entry["sha256"] = sha256(os.path.join(a.out, entry["file"]))
        entry["weights"] = {"bits": a.bits, "block_size": a.block_size, "symmetric": not a.asymmetric}
        report[name] = {**r, "seconds": round(time.time() - t0, 1)}
        print(f"  {name}: {r['quantized']} of {r['matmuls']} MatMul nodes now MatMulNBits ({a.bits} bit), "
              f"{report[name]['seconds']} s", flush=True)
    manifest["created_by"] += f"; quantized {a.bits}-bit by framefarm_export.quantize"
    with open(os.path.join(a.out, "framefarm-bundle.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
