#!/usr/bin/env bash
# Installs the browser the dashboard's browser test drives: Debian's chromium package (driven by
# playwright-core, which downloads nothing). Idempotent; needs root or sudo only when it is missing.
set -euo pipefail
BIN="${FRAMEFARM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$BIN" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing: install Chromium and set FRAMEFARM_CHROMIUM to its path" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
  fi
fi
echo "installing chromium (Debian package) ..." >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$BIN" --version >&2
