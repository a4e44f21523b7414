#!/usr/bin/env bash
# Installs the servers that local clusters and the integration tests start on loopback:
# NATS with JetStream from Debian's nats-server package. (The S3 server, s3rver, comes with
# npm ci.) Idempotent; needs root or sudo only when nats-server is missing.
set -euo pipefail
if command -v nats-server >/dev/null 2>&1 || [ -n "${NATS_SERVER_BIN:-}" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "nats-server is missing: install NATS Server 2.9+ and put it on PATH (or set NATS_SERVER_BIN)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "nats-server is missing and installing it needs root: apt-get install nats-server" >&2
    exit 1
  fi
fi
echo "installing nats-server (Debian package) ..." >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
nats-server --version >&2
