#!/usr/bin/env bash
# Installs the browser the dashboard's browser test drives: Debian's chromium package (driven by
# playwright-core, which downloads nothing). Idempotent; needs root or sudo only when it is missing.
set -euo pipefail
BIN="${FRAMEFARM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$BIN" ]; then
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install chromium "install Chromium and set FRAMEFARM_CHROMIUM to its path" chromium
"$BIN" --version >&2
