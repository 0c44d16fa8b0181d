#!/usr/bin/env bash
# Set up .venv for arlm. CPU torch 2.13.0 goes in first, so nothing pulls a multi-GB CUDA
# build (a torch already in .venv, e.g. a CUDA one you installed, is kept as it is).
#   bash scripts/setup.sh         # to train, generate, inspect
#   bash scripts/setup.sh --dev   # + test tools, Chromium + an Arabic font for the browser tests, node, and
#                                 #   onnxruntime-web (npm, pinned by package-lock.json) for the web page (arlm/webpage)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
if [ "$dev" = 1 ]; then
  .venv/bin/pip install -q -e ".[dev]"
  # gcc builds the LSTM step's C loop (arlm/lstm_step.c); the tests check both paths.
  # node runs the web page's JavaScript in its tests, npm installs onnxruntime-web for it.
  if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "Noto.*Arabic" || ! command -v cc >/dev/null 2>&1 \
     || ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-core gcc libc6-dev \
        $(command -v node >/dev/null 2>&1 || echo nodejs) $(command -v npm >/dev/null 2>&1 || echo npm) >/dev/null
    else
      echo "warning: the tests need a C compiler (gcc), Debian's chromium and fonts-noto-core for the browser tests, and node and npm for the web page (run as root, or install them)" >&2
    fi
  fi
  if command -v npm >/dev/null 2>&1; then
    # onnxruntime-web, the version package-lock.json pins, into node_modules/ (arlm.webpage.build_web copies it)
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  fi
else
  .venv/bin/pip install -q -e .
fi
