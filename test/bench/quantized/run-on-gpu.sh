#!/usr/bin/env bash
# Weight-only 8- and 4-bit transformers (issue: weights for 24 GB cards) on a lent GPU, against the
# fp16 export they come from. STEP_DIR is a test/bench/gpu-step/torch_step.py export
# (transformer.onnx, step.safetensors, torch.json: e.g. --double 5 --single 10 --no-vae). For fp16
# and each of int8 and int4 (framefarm_export.quantize --graph), the gpu-step benchmark runs one
# step (median of --reps) and a whole 25-step section, with GPU memory sampled by nvidia-smi; the
# quantized sections' latents are compared with fp16's. Results in OUT/<precision>/; the table:
# test/bench/quantized/RESULTS.md. Needs test/bench/device/unpack.sh to have run, and dist/.
#   test/bench/quantized/run-on-gpu.sh STEP_DIR OUT [BLOCK_SIZE]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
source /tmp/ffdev/env.sh
# Each call brings a fresh copy of the repository: link the unpacked node_modules into it again.
[ -e "$repo/node_modules" ] || ln -s /tmp/ffdev/node_modules "$repo/node_modules"
step=$1 out=$2 block=${3:-128}
mkdir -p "$out"
bash "$repo/test/bench/gpu-step/run-on-gpu.sh" "$step" "$out/fp16" --ep cuda --reps 3 --latents-out "$out/fp16-latents.safetensors"
for bits in 8 4; do
  q=$step-int$bits
  mkdir -p "$q"
  for f in step.safetensors torch.json euler.onnx matmul.onnx mha.onnx upload.onnx; do
    [ -e "$step/$f" ] && ln -sf "$step/$f" "$q/$f"
  done
  if [ ! -f "$q/transformer.onnx" ]; then
    python3 -m framefarm_export.quantize --graph "$step/transformer.onnx" --out "$q/transformer.onnx" \
      --bits "$bits" --block-size "$block" > "$out/quantize-int$bits.log" 2>&1 || { tail -20 "$out/quantize-int$bits.log"; exit 1; }
  fi
  du -b "$q"/transformer.onnx* | tee -a "$out/quantize-int$bits.log"
  bash "$repo/test/bench/gpu-step/run-on-gpu.sh" "$q" "$out/int$bits" --ep cuda --reps 3 \
    --latents-ref "$out/fp16-latents.safetensors"
done
