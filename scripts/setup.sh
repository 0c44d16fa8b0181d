#!/usr/bin/env bash
# Set up .venv for arlm. CPU torch 2.13.0 goes in first, so nothing pulls a multi-GB CUDA
# build (a torch already in .venv, e.g. a CUDA one you installed, is kept as it is).
#   bash scripts/setup.sh         # to train, generate, inspect
#   bash scripts/setup.sh --dev   # + test tools, and Chromium + an Arabic font for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
if [ "$dev" = 1 ]; then
  .venv/bin/pip install -q -e ".[dev]"
  # gcc builds the LSTM step's C loop (arlm/lstm_step.c); the tests check both paths.
  if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "Noto.*Arabic" || ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-core gcc libc6-dev >/dev/null
    else
      echo "warning: the tests need a C compiler (gcc), and the HTML report test Debian's chromium and fonts-noto-core (run as root, or install them)" >&2
    fi
  fi
else
  .venv/bin/pip install -q -e .
fi
