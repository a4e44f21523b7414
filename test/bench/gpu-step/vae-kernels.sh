#!/usr/bin/env bash
# Where a VAE decode tile's GPU time goes, kernel by kernel, for onnxruntime (the node's decoder
# graph through vae.js) and for PyTorch (diffusers' decoder on the same latents), under Nsight
# Compute with one metric (gpu__time_duration) and the clocks left alone. Each side decodes the
# tile several times; the last run's kernels (the trailing period of the kernel-name sequence,
# after cuDNN's algorithm search and warm-up) are summed by kernel name.
#   test/bench/gpu-step/vae-kernels.sh DIR OUT [GRAPH]   (DIR from torch_vae.py; GRAPH defaults to DIR/vae_decoder.onnx)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
dir=$1 out=$2 graph=${3:-$1/vae_decoder.onnx}
tag=$(basename "$graph" .onnx)
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
mkdir -p "$out"
"$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out/ncu-ort-$tag.csv" \
  node "$repo/dist/test/bench/gpu-step/vae.js" --dir "$dir" --ep cuda --frames 5 --repeat 2 --graph "$graph" > "$out/ncu-ort-$tag.log" 2>&1
if [ ! -f "$out/ncu-torch.csv" ]; then
  "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out/ncu-torch.csv" python3 - "$dir" > "$out/ncu-torch.log" 2>&1 <<'PY'
import sys, torch
from safetensors.torch import load_file
from diffusers import AutoencoderKLHunyuanVideo
torch.manual_seed(0)
vae = AutoencoderKLHunyuanVideo().eval().to("cuda", torch.float16)
z = load_file(sys.argv[1] + "/vae.safetensors")["latents"][:, :, :5].to("cuda", torch.float16)
with torch.no_grad():
    for _ in range(3):
        vae.decoder(vae.post_quant_conv(z))
torch.cuda.synchronize()
PY
fi
python3 - "$out" "$tag" <<'PY'
import csv, sys, collections
out, tag = sys.argv[1], sys.argv[2]
def last_period(path):
    rows = [r for r in csv.DictReader(l for l in open(path) if l.startswith('"'))]
    rows = [r for r in rows if r.get("Metric Name") == "gpu__time_duration.sum"]
    names = [r["Kernel Name"] for r in rows]
    n = len(names)
    for m in range(1, n // 2 + 1):
        if names[n - m:] == names[n - 2 * m:n - m]:
            # smallest period whose two trailing copies agree; grow it to a whole run (the run repeats)
            pass
    best = None
    for m in range(n // 2, 0, -1):
        if names[n - m:] == names[n - 2 * m:n - m]:
            best = m
            break
    rows = rows[n - best:] if best else rows
    unit = rows[0]["Metric Unit"] if rows else "ns"
    scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0}.get(unit, 1e-6)
    agg = collections.defaultdict(lambda: [0.0, 0])
    for r in rows:
        v = float(r["Metric Value"].replace(",", "")) * scale
        agg[r["Kernel Name"][:110]][0] += v
        agg[r["Kernel Name"][:110]][1] += 1
    return sum(a[0] for a in agg.values()), len(rows), sorted(agg.items(), key=lambda kv: -kv[1][0])
lines = []
for side, path in (("onnxruntime " + tag, f"{out}/ncu-ort-{tag}.csv"), ("pytorch", f"{out}/ncu-torch.csv")):
    try:
        total, count, top = last_period(path)
    except Exception as e:  # noqa: BLE001
        lines.append(f"{side}: could not read {path}: {e}")
        continue
    lines.append(f"## {side}: {count} kernels, {total:.1f} ms of GPU time in one tile")
    for name, (ms, c) in top[:25]:
        lines.append(f"{ms:9.2f} ms {c:5d}x  {name}")
open(f"{out}/vae-kernels-{tag}.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
