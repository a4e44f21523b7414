#!/usr/bin/env bash
# Regenerates test/fixtures/tiny-bundle from the tiny reference model and verifies it.
# Needs python3 with torch, transformers, onnx, onnxruntime and diffusers (PYTHONPATH may point
# at a diffusers checkout's src/). CI never runs this: the bundle it writes is committed.
#   usage: gpu-node/export/regenerate-tiny-bundle.sh [REFERENCE_DIR] [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ref=${1:-../shared/reference}
out=${2:-$repo/test/fixtures/tiny-bundle}
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$out.tmp"
python3 -m framefarm_export --src "$ref/tiny-framepack" --out "$out.tmp" --dtype fp32
python3 -m framefarm_export.verify --src "$ref/tiny-framepack" --bundle "$out.tmp" --cases "$ref/cases" \
  --report "$out.tmp/export-report.json"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "tiny bundle written to $out"
