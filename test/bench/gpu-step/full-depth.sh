#!/usr/bin/env bash
# The transformer at full depth (20 double + 40 single blocks, ~13B parameters, random weights) on a
# lent GPU: PyTorch bf16's step and framefarm's fp16 export (torch_step.py), then the gpu-node's step
# on that export (main.js). The export takes about ten minutes, so `start` runs it detached (it
# survives the call while the machine stays warm) and `step` measures once it has finished.
#   full-depth.sh start [GPU]    torch_step.py --double 20 --single 40 --no-vae --steps 2, detached, log in WORK/full.log
#   full-depth.sh status         the log's tail, and whether the export is done
#   full-depth.sh step OUT [GPU] the gpu-step benchmark on the export (one step, no section), into OUT
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source /tmp/ffdev/env.sh
work=/tmp/ffdev/work full=/tmp/ffdev/work/full
mkdir -p "$work"
case "$1" in
  start)
    [ -f "$full/transformer.onnx" ] && { echo "already exported"; exit 0; }
    # A copy of this script's folder: the repository there is replaced by the next call's.
    mkdir -p "$work/full-src" && cp "$here"/*.py "$work/full-src/"
    cp -r "$here/../../../gpu-node/export/framefarm_export" "$work/full-src/"
    CUDA_VISIBLE_DEVICES=${2:-0} PYTHONUNBUFFERED=1 PYTHONPATH=$work/full-src:$PYTHONPATH setsid nohup \
      python3 "$work/full-src/torch_step.py" --double 20 --single 40 --no-vae --steps 2 --out "$full" > "$work/full.log" 2>&1 < /dev/null &
    echo "started full-depth export, pid $!"
    ;;
  status)
    tail -5 "$work/full.log"
    if [ -f "$full/step.safetensors" ]; then echo "full-depth export: done"; else echo "full-depth export: running"; fi
    ;;
  step)
    out=$2
    mkdir -p "$out"
    cp "$work/full.log" "$out/" 2>/dev/null
    CUDA_VISIBLE_DEVICES=${3:-0} bash "$here/run-on-gpu.sh" "$full" "$out" --ep cuda --reps 3 --no-section
    ;;
  *) echo "usage: full-depth.sh start [GPU] | status | step OUT [GPU]"; exit 2 ;;
esac
