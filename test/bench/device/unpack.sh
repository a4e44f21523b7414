#!/usr/bin/env bash
# There (the lent GPU machine): run in every transfer call with what that call carried of
# .cache/device (see stage.sh); copies it to /tmp/ffdev (which lives while the machine stays warm)
# and, once every part of a payload is there, unpacks it: node + node_modules, and the CUDA provider
# beside onnxruntime-node's libonnxruntime.so.1. There is no zstd binary there: pyarrow decodes.
# Writes /tmp/ffdev/env.sh (PATH, LD_LIBRARY_PATH with CUDA 13 and cuDNN, PYTHONPATH, NODE_PATH).
#   bash test/bench/device/unpack.sh ort-cuda=N runtime=M
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
dev=/tmp/ffdev
mkdir -p "$dev/parts"
[ -d "$repo/.cache/device" ] && cp -rn "$repo"/.cache/device/. "$dev/parts/"
[ -d "$dev/parts/parts" ] && cp -n "$dev"/parts/parts/* "$dev/parts/" && rm -rf "$dev/parts/parts"
unzstd_to() {  # NAME DIR: cat NAME.part-* | unzstd | tar -x -C DIR
  cat "$dev"/parts/$1.part-* > "$dev/$1.tar.zst"
  python3 -c "
import pyarrow as pa, sys
src = pa.CompressedInputStream(pa.OSFile(sys.argv[1], 'rb'), 'zstd')
with open(sys.argv[2], 'wb') as out:
    while True:
        b = src.read(1 << 24)
        if not b: break
        out.write(b)
" "$dev/$1.tar.zst" "$dev/$1.tar"
  tar -x -C "$2" -f "$dev/$1.tar"
  rm -f "$dev/$1.tar" "$dev/$1.tar.zst"
}
# Each payload is unpacked as soon as all its parts are here (python work can start before node is).
complete() {  # NAME: are all of NAME's parts here?
  local count=0 have
  for want in "${wants[@]}"; do [ "${want%%=*}" = "$1" ] && count=${want#*=}; done
  have=$(find "$dev/parts" -maxdepth 1 -name "$1.part-*" | wc -l)
  echo "unpack: $1: $have of $count parts here"
  [ "$count" -gt 0 ] && [ "$have" -ge "$count" ]
}
wants=("$@")
ortbin=$dev/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
if [ ! -x "$dev/bin/node" ] && complete runtime; then unzstd_to runtime "$dev"; fi
if [ -x "$dev/bin/node" ] && [ ! -f "$ortbin/libonnxruntime_providers_cuda.so" ] && complete ort-cuda; then
  unzstd_to ort-cuda "$ortbin"
fi
if [ -f "$dev/parts/diffusers.tar.xz" ] && [ ! -d "$dev/py/diffusers" ]; then mkdir -p "$dev/py"; tar -C "$dev/py" -xJf "$dev/parts/diffusers.tar.xz"; fi
if [ -f "$dev/parts/nats-server.xz" ] && [ ! -x "$dev/bin/nats-server" ]; then
  mkdir -p "$dev/bin"
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$dev/parts/nats-server.xz" "$dev/bin/nats-server"
  chmod +x "$dev/bin/nats-server"
fi
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
cat > "$dev/env.sh" <<ENV
export PATH=$dev/bin:\$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:\${LD_LIBRARY_PATH:-}
export PYTHONPATH=$dev/py:$repo/gpu-node/export:$repo/test/bench/gpu-step:\${PYTHONPATH:-}
export NODE_PATH=$dev/node_modules
export NATS_SERVER_BIN=$dev/bin/nats-server
ENV
[ -d "$dev/node_modules" ] && { [ -e "$repo/node_modules" ] || ln -s "$dev/node_modules" "$repo/node_modules"; }
if [ -f "$ortbin/libonnxruntime_providers_cuda.so" ]; then echo "unpack: ready; source $dev/env.sh"; else echo "unpack: not complete yet"; fi
