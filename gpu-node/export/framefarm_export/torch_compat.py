"""Lets diffusers' transformer and VAE (and FramePack's sampler) run on an old CPU torch.

For machines that have only Debian's python3-torch 1.13 and none of huggingface_hub,
safetensors or transformers: install() adds what those lack, and only what is missing, so on a
machine with torch 2.x and the real packages it changes nothing. Used by the reference scripts
only (lllyasviel_cases.py); never by the exporter.

  - huggingface_hub: a stub (nothing is downloaded; models are built from config + weights);
  - safetensors: a small pure-Python reader/writer of the format;
  - torch: F.scaled_dot_product_attention (plain softmax attention), torch.compiler, torch.xpu,
    torch.distributed.device_mesh, the float8 dtype names (only named, never used);
  - import_with_stubs(fn): reruns fn, stubbing each module it reports missing (optional diffusers
    back-ends such as torch.nn.attention.flex_attention).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import re
import struct
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F


def _stub_module(name):
    m = types.ModuleType(name)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr.endswith("Error") or attr.endswith("Exception"):
            v = type(attr, (Exception,), {})
        elif attr[0].isupper() and not attr.isupper():
            v = type(attr, (), {"__init__": lambda self, *a, **k: None})
        elif attr.isupper():
            v = {"HF_HOME": "/tmp/hf-home", "HF_HUB_OFFLINE": True, "HF_HUB_DISABLE_TELEMETRY": True}.get(attr, "")
        else:
            def v(*a, **k):
                if len(a) == 1 and callable(a[0]) and not k:
                    return a[0]  # used as a decorator
                return None
            v.__name__ = attr
        setattr(m, attr, v)
        return v

    m.__getattr__ = __getattr__
    m.__path__ = []
    m.__version__ = "0.99.0"
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return m


# --- safetensors, pure Python -------------------------------------------------------------------
_NP = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
       "BOOL": np.bool_, "I8": np.int8, "I16": np.int16}
_CODE = {np.dtype(v): k for k, v in _NP.items()}


def st_read(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        raw = data[8 + n + a:8 + n + b]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_NP[v["dtype"]])
        out[k] = arr.reshape(v["shape"]).copy()
    return out, meta


def st_write(path, arrays, metadata=None):
    header, blobs, off = {}, [], 0
    # Largest elements first (as the safetensors library does), so every tensor stays aligned.
    for k in sorted(arrays, key=lambda k: (-np.asarray(arrays[k]).dtype.itemsize, k)):
        a = np.ascontiguousarray(arrays[k])
        raw = a.tobytes()
        header[k] = {"dtype": _CODE[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class _SafeOpen:
    def __init__(self, path, framework="pt", device="cpu"):
        self._t, self._m = st_read(path)
        self._pt = framework == "pt"

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def keys(self):
        return list(self._t)

    def metadata(self):
        return self._m

    def get_tensor(self, k):
        return torch.from_numpy(self._t[k]) if self._pt else self._t[k]


def _install_safetensors():
    try:
        import safetensors.torch  # noqa: F401
        return
    except ImportError:
        pass
    root = types.ModuleType("safetensors")
    root.__path__ = []
    root.__spec__ = importlib.machinery.ModuleSpec("safetensors", None)
    root.safe_open = _SafeOpen
    pt = types.ModuleType("safetensors.torch")
    pt.__spec__ = importlib.machinery.ModuleSpec("safetensors.torch", None)
    pt.load_file = lambda path, device="cpu": {k: torch.from_numpy(v) for k, v in st_read(path)[0].items()}
    pt.save_file = lambda tensors, path, metadata=None: st_write(path, {k: v.detach().cpu().numpy() for k, v in tensors.items()}, metadata)
    pt.safe_open = _SafeOpen
    npm = types.ModuleType("safetensors.numpy")
    npm.__spec__ = importlib.machinery.ModuleSpec("safetensors.numpy", None)
    npm.load_file = lambda path: st_read(path)[0]
    npm.save_file = lambda arrays, path, metadata=None: st_write(path, arrays, metadata)
    root.torch, root.numpy = pt, npm
    sys.modules.update({"safetensors": root, "safetensors.torch": pt, "safetensors.numpy": npm})


# --- torch ---------------------------------------------------------------------------------------
def _install_torch():
    noop = lambda *a, **k: None  # noqa: E731
    zero = lambda *a, **k: 0  # noqa: E731
    false = lambda *a, **k: False  # noqa: E731
    ident = lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda f: f))  # noqa: E731
    for dev in ["xpu", "mps", "npu", "mlu"]:
        if not hasattr(torch, dev):
            setattr(torch, dev, types.SimpleNamespace(
                empty_cache=noop, device_count=zero, is_available=false, manual_seed=noop, reset_peak_memory_stats=noop,
                max_memory_allocated=zero, synchronize=noop, current_device=zero, memory_allocated=zero))
    for a in ["empty_cache", "device_count", "manual_seed", "synchronize", "current_allocated_memory", "driver_allocated_memory"]:
        if not hasattr(torch.mps, a):
            setattr(torch.mps, a, zero)
    if not hasattr(torch, "compiler"):
        torch.compiler = types.SimpleNamespace(disable=ident, is_compiling=false, is_dynamo_compiling=false, allow_in_graph=ident)
    for dt in ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64"]:
        if not hasattr(torch, dt):
            setattr(torch, dt, torch.float16 if dt.startswith("float") else torch.int16)  # named only, never used
    importlib.import_module("torch.distributed")
    if not hasattr(torch.distributed, "device_mesh"):
        torch.distributed.device_mesh = _stub_module("torch.distributed.device_mesh")
        sys.modules["torch.distributed.device_mesh"] = torch.distributed.device_mesh
    if not hasattr(F, "scaled_dot_product_attention"):
        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            s = scale if scale is not None else query.shape[-1] ** -0.5
            w = (query @ key.transpose(-2, -1)) * s
            if attn_mask is not None:
                w = w.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else w + attn_mask
            return torch.softmax(w, dim=-1) @ value
        F.scaled_dot_product_attention = sdpa


def install():
    _install_torch()
    _install_safetensors()
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        for name in ["huggingface_hub", "huggingface_hub.constants", "huggingface_hub.utils", "huggingface_hub.file_download",
                     "huggingface_hub.errors", "huggingface_hub.hf_api", "huggingface_hub.repocard", "huggingface_hub.dataclasses"]:
            sys.modules.setdefault(name, _stub_module(name))
    for name in ["tqdm", "tqdm.auto"]:
        try:
            importlib.import_module(name)
        except ImportError:
            m = _stub_module(name)
            m.trange = lambda n, disable=False: range(n)
            m.tqdm = lambda it=None, *a, **k: it
            m.auto = m
            sys.modules[name] = m


def import_with_stubs(fn, attempts=40):
    """Runs fn(); each module it lacks ('No module named X') is stubbed and fn rerun."""
    for _ in range(attempts):
        try:
            return fn()
        except (ImportError, RuntimeError) as e:
            m = re.search(r"No module named '([^']+)'", str(e))
            if m is None:
                raise
            parts = m.group(1).split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                if sub not in sys.modules:
                    try:
                        importlib.import_module(sub)
                    except ImportError:
                        sys.modules[sub] = _stub_module(sub)
            for k in [k for k in sys.modules if k.startswith("diffusers")]:
                del sys.modules[k]
            print(f"[torch_compat] stubbed {m.group(1)}", file=sys.stderr)
    raise RuntimeError("too many missing modules")
