#!/usr/bin/env bash
# Regenerates test/fixtures/tiny-bundle from the tiny reference model and verifies it; the old
# bundle is replaced only if verification passes.
# Needs python3 with torch, transformers, onnx, onnxscript, onnxruntime, safetensors and diffusers
# (PYTHONPATH may point at a diffusers checkout's src/). CI never runs this: it uses the committed bundle.
#   usage: gpu-node/export/regenerate-tiny-bundle.sh [REFERENCE_DIR] [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ref=${1:-../shared/reference}
out=${2:-$repo/test/fixtures/tiny-bundle}
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$out.tmp"
python3 -m framefarm_export --src "$ref/tiny-framepack" --out "$out.tmp" --dtype fp32 --attention fused --step-cache-graphs
python3 -m framefarm_export.verify --src "$ref/tiny-framepack" --bundle "$out.tmp" --cases "$ref/cases"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "tiny bundle written to $out"
