"""Records in a bundle's manifest where each Linear of the transformer lives in its ONNX graphs.

A LoRA names diffusers modules (transformer_blocks.0.attn.to_q); an exported graph names its
weights otherwise: torch.onnx keeps a Gemm's weight under the parameter's name ([out, in], transB),
but a MatMul's weight is folded into a transposed constant with a generated name (val_835,
[in, out]). framefarm's nodes fuse a job's LoRAs into those initializers (no Python at run time), so
the manifest gets, for every Linear weight of the transformer found in the graphs, its initializer,
layout and shape:

  "lora_targets": {
    "dtype": "fp32",                                   # the initializers' element type
    "modules": {"transformer_blocks.0.attn.to_q": {"initializer": "val_835", "layout": "in_out",
                                                   "out": 3072, "in": 3072}, ...},
    "not_targetable": ["..."]                          # Linears whose weight no graph holds as is
  }

Initializers are found by value, not by name: each Linear weight of the source transformer (cast
to the graphs' dtype) is compared byte for byte with every 2-D initializer of the transformer
graphs (transformer.onnx and, when present, the step caches' graphs, which copy its initializers
under the same names), as it is ([out, in]) and transposed ([in, out]). Weights are hashed, so a
real transformer's 26 GB are read once. A Linear is a 2-D ".weight" of the transformer (every 2-D
weight of HunyuanVideo's FramePack transformer is one).

Runs on any onnx >= 1.12 with numpy (Debian's python3-onnx); reads safetensors itself:
  python -m framefarm_export.lora_targets --bundle test/fixtures/tiny-bundle \
      --transformer ../shared/reference/tiny-framepack/transformer
The exporter runs it after writing the graphs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import struct
import sys

import numpy as np

from .step_cache_graphs import GRAPHS as STEP_CACHE_GRAPHS

TRANSFORMER_GRAPHS = ("transformer", *STEP_CACHE_GRAPHS)
# ONNX TensorProto element types -> manifest dtype names.
ONNX_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16"}
SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}


def _f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even (torch's .to(torch.bfloat16))."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a)
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def cast_bytes(array: np.ndarray, src: str, dst: str) -> bytes:
    """A weight's bytes in dtype dst, from an array holding dtype src (bf16 as uint16 bits)."""
    if src == dst:
        return np.ascontiguousarray(array).tobytes()
    f32 = _bf16_bits_to_f32(array) if src == "bf16" else array.astype(np.float32)
    if dst == "fp32":
        return np.ascontiguousarray(f32).tobytes()
    if dst == "fp16":
        return np.ascontiguousarray(f32.astype(np.float16)).tobytes()
    return np.ascontiguousarray(_f32_to_bf16_bits(f32)).tobytes()


def read_safetensors(path: str):
    """Yields (name, dtype, shape, array) for each tensor of a safetensors file (bf16 as uint16)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info["dtype"]
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            raw = f.read(end - begin)
            np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}.get(dtype)
            if np_dtype is None:
                continue
            yield name, SAFETENSORS_DTYPES[dtype], tuple(info["shape"]), np.frombuffer(raw, dtype=np_dtype).reshape(info["shape"])


def transformer_linears(transformer_dir: str):
    """name -> (dtype, array [out, in]) of every 2-D weight in the transformer's safetensors."""
    files = sorted(glob.glob(os.path.join(transformer_dir, "*.safetensors")))
    if not files:
        raise SystemExit(f"error: no .safetensors in {transformer_dir}")
    out = {}
    for file in files:
        for name, dtype, shape, array in read_safetensors(file):
            if name.endswith(".weight") and len(shape) == 2:
                out[name[: -len(".weight")]] = (dtype, array)
    return out


def linears_of_module(module) -> dict:
    """transformer_linears for a loaded torch module (the exporter's): its 2-D weights."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith(".weight") and t.dim() == 2 and t.dtype in names:
            t = t.detach().cpu().contiguous()
            array = t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
            out[name[: -len(".weight")]] = (names[t.dtype], array)
    return out


def _initializer_bytes(bundle: str, tensor) -> bytes | None:
    if tensor.data_location == 1:  # EXTERNAL
        info = {e.key: e.value for e in tensor.external_data}
        with open(os.path.join(bundle, info["location"]), "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"]))
    if tensor.raw_data:
        return bytes(tensor.raw_data)
    if tensor.data_type == 1 and len(tensor.float_data) > 0:
        return np.asarray(tensor.float_data, dtype=np.float32).tobytes()
    return None


def graph_initializers(bundle: str, manifest: dict):
    """digest -> {(initializer name, dims, dtype)} over every transformer graph of the bundle."""
    import onnx

    found: dict[bytes, set] = {}
    dtypes = set()
    for comp in TRANSFORMER_GRAPHS:
        entry = manifest["components"].get(comp)
        if entry is None:
            continue
        model = onnx.load(os.path.join(bundle, entry["file"]), load_external_data=False)
        for t in model.graph.initializer:
            if len(t.dims) != 2 or t.data_type not in ONNX_DTYPES:
                continue
            data = _initializer_bytes(bundle, t)
            if data is None:
                continue
            dtypes.add(ONNX_DTYPES[t.data_type])
            found.setdefault(hashlib.sha256(data).digest(), set()).add((t.name, tuple(t.dims), ONNX_DTYPES[t.data_type]))
    return found, dtypes


def lora_targets(bundle: str, manifest: dict, linears: dict) -> dict:
    found, dtypes = graph_initializers(bundle, manifest)
    # The Linears are in the transformer's dtype; a reduced-precision export keeps a few 2-D
    # constants in float32 (tables and islands the exporter leaves wide), which are no Linear of
    # that dtype: they are left out of the match (a Linear held only in another dtype is listed
    # as not targetable).
    dtype = manifest.get("components", {}).get("transformer", {}).get("dtype", manifest["dtype"])
    if dtype not in dtypes and len(dtypes) == 1:
        dtype = next(iter(dtypes))
    found = {digest: {hit for hit in hits if hit[2] == dtype} for digest, hits in found.items()}
    modules, missing = {}, []
    for name in sorted(linears):
        src_dtype, w = linears[name]
        out_dim, in_dim = w.shape
        hit = None
        for layout, array in (("out_in", w), ("in_out", w.T)):
            names = {n for n, dims, _ in found.get(hashlib.sha256(cast_bytes(array, src_dtype, dtype)).digest(), set())
                     if dims == array.shape}
            if len(names) > 1:
                raise SystemExit(f"error: {name}'s weight matches several initializers: {sorted(names)}")
            if names:
                hit = {"initializer": names.pop(), "layout": layout, "out": int(out_dim), "in": int(in_dim)}
                break
        if hit is None:
            missing.append(name)
        else:
            modules[name] = hit
    return {"dtype": dtype, "modules": modules, "not_targetable": missing}


def write(bundle: str, linears: dict) -> dict:
    path = os.path.join(bundle, "framefarm-bundle.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    quantized = [c for c in TRANSFORMER_GRAPHS if manifest["components"].get(c, {}).get("weights")]
    if quantized:
        raise SystemExit(f"error: {', '.join(quantized)} hold quantized weights; LoRA targets need the unquantized bundle")
    targets = lora_targets(bundle, manifest, linears)
    manifest["lora_targets"] = targets
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"lora_targets: {len(targets['modules'])} Linears found in the graphs ({targets['dtype']}), "
          f"{len(targets['not_targetable'])} not: {targets['not_targetable']}", flush=True)
    return targets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="framefarm_export.lora_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder (framefarm-bundle.json and its transformer graphs)")
    p.add_argument("--transformer", required=True,
                   help="the source transformer folder the bundle was exported from (its *.safetensors)")
    args = p.parse_args(argv)
    write(args.bundle, transformer_linears(args.transformer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
