#!/usr/bin/env bash
# Installs what the Python client (shared/clients/python) needs, all from Debian, so that the
# versions match one another: python3 with python3-grpcio and python3-protobuf to run it, and
# protoc (protobuf-compiler) with grpc_python_plugin (protobuf-compiler-grpc) for `npm run proto`
# to generate its stubs. (Debian 12's python3-grpc-tools is gRPC 1.14, far older than its
# python3-grpcio 1.51, so the generators come from the packages built with the runtime ones.)
# The client and its test run Debian's interpreter, /usr/bin/python3, whose dist-packages hold
# those modules, whatever python3 comes first on PATH (FRAMEFARM_PYTHON overrides it).
# python3-onnx and python3-numpy run the exporter's graph passes in the unit tests.
# Idempotent; needs root or sudo only when something is missing.
set -euo pipefail
PY="${FRAMEFARM_PYTHON:-/usr/bin/python3}"
if [ -x "$PY" ] && "$PY" -c "import grpc, google.protobuf, onnx, numpy" >/dev/null 2>&1 \
  && command -v protoc >/dev/null 2>&1 && command -v grpc_python_plugin >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install "the Python client's packages" \
  "install Python 3 with grpcio and protobuf, protoc and grpc_python_plugin" \
  python3 python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc python3-onnx python3-numpy
"$PY" -c "import grpc, google.protobuf; print('python3-grpcio', grpc.__version__, 'python3-protobuf', google.protobuf.__version__)" >&2
