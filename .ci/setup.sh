#!/usr/bin/env bash
# One-step, idempotent set-up of a development/CI machine (Debian/Ubuntu, Python >= 3.10, CPU).
#  - installs the system library open3d needs (libusb-1.0-0) when it is missing,
#  - creates .venv next to this repository's pyproject.toml,
#  - installs the CPU build of torch (pinned; a loose requirement would pull a multi-GB CUDA build),
#  - installs this package in editable mode with the dev extra.
# Re-running it is cheap: it re-installs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
TORCH_SPEC="${PERCEPTION_TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python >= 3.10 (set PYTHON=/path/to/python)" >&2; exit 1; }

log() { echo "setup: $*" >&2; }

# 1. libusb-1.0 for open3d.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    log "installing libusb-1.0-0 (needed by open3d)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }
  else
    log "WARNING: libusb-1.0 is missing and apt-get is not available; install libusb-1.0 for open3d"
  fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# 3. Packages, only when something changed.
STAMP="$VENV/.perception-setup"
WANT="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! "$VPY" -c 'import torch, perception' >/dev/null 2>&1; then
  log "installing packages into $VENV (a minute or two on first run)"
  LOG="$VENV/setup.log"
  : > "$LOG"
  pipi() { "$VPY" -m pip install -q --disable-pip-version-check "$@" >>"$LOG" 2>&1 \
             || { cat "$LOG" >&2; log "pip install $* failed (log: $LOG)"; exit 1; }; }
  pipi --upgrade pip
  pipi "$TORCH_SPEC"
  pipi -e ".[dev]"
  # The nuScenes devkit cross-checks our detection metrics; it pins numpy<2, so no dependencies.
  pipi --no-deps "nuscenes-devkit==1.2.0"
  "$VPY" -c 'import torch, open3d, cv2, numba, mcap, rosbags, perception' \
    || { log "packages installed but do not import (log: $LOG)"; exit 1; }
  echo "$WANT" > "$STAMP"
fi
