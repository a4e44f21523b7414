#!/usr/bin/env bash
# Installs the servers that local clusters and the integration tests start on loopback:
# NATS with JetStream from Debian's nats-server package. (The S3 server, s3rver, comes with
# npm ci.) Idempotent; needs root or sudo only when nats-server is missing.
set -euo pipefail
if command -v nats-server >/dev/null 2>&1 || [ -n "${NATS_SERVER_BIN:-}" ]; then
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install nats-server "install NATS Server 2.9+ and put it on PATH (or set NATS_SERVER_BIN)" nats-server
nats-server --version >&2
