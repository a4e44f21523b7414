#!/usr/bin/env bash
# One full gpu-step run on a GPU machine: the PyTorch side and the fused fp16 export
# (torch_step.py), then the gpu-node side (main.js) with GPU memory sampled by nvidia-smi.
# Needs python3 with torch + diffusers (PYTHONPATH), node, and the project's built dist/ and
# node_modules/onnxruntime-node. Logs and JSON go to OUT_DIR.
#   test/bench/gpu-step/run-on-gpu.sh WORK_DIR OUT_DIR [main.js options, e.g. --ep webgpu --resident]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
work=$1 out=$2
shift 2
mkdir -p "$work" "$out"
if [ ! -f "$work/transformer.onnx" ]; then
  PYTHONUNBUFFERED=1 python3 "$here/torch_step.py" --out "$work" 2>&1 | tee "$out/torch_step.log" || exit 1
fi
cp "$work/torch.json" "$out/"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu-mem-node.csv" &
smi=$!
node "$repo/dist/test/bench/gpu-step/main.js" --dir "$work" "$@" 2>&1 | tee "$out/node.log"
rc=${PIPESTATUS[0]}
kill "$smi"
cp "$work"/gpu-step-*.json "$out/" 2>/dev/null
echo "GPU memory used while node ran (MiB): baseline $(head -1 "$out/gpu-mem-node.csv"), peak $(sort -n "$out/gpu-mem-node.csv" | tail -1)" | tee -a "$out/node.log"
exit "$rc"
