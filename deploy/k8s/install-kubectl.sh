#!/usr/bin/env bash
# Installs the kustomize engine that `npm run test:deploy` renders deploy/k8s with: kubectl from
# Debian's kubernetes-client package (its built-in `kubectl kustomize`), unpacked into
# .cache/kubectl/ inside the repository, so it needs no root once the apt lists exist and never
# replaces a kubectl already on the machine. Idempotent. Set FRAMEFARM_KUBECTL to use another.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.cache/kubectl"
if [ -n "${FRAMEFARM_KUBECTL:-}" ] || [ -x "$dest/usr/bin/kubectl" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "kubectl for the deploy tests is missing: on a non-Debian machine set FRAMEFARM_KUBECTL to a kubectl (any version >= 1.20)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# apt-get download writes into the current folder as the _apt user when it can.
chmod 777 "$tmp"
cd "$tmp"
if ! apt-get download -qq kubernetes-client >/dev/null 2>&1; then
  echo "updating apt lists to fetch Debian's kubernetes-client ..." >&2
  $SUDO apt-get update -qq >/dev/null
  apt-get download -qq kubernetes-client >/dev/null
fi
mkdir -p "$dest"
dpkg-deb -x kubernetes-client_*.deb "$dest"
"$dest/usr/bin/kubectl" version --client >&2
