#!/usr/bin/env bash
# Set up sencache in ./.venv on a fresh machine: CPU torch first (never the multi-GB CUDA build),
# then the package with its test extras, then the offline LPIPS weights. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --disable-pip-version-check "torch==2.13.0"
$PIP install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/python scripts/fetch_lpips_weights.py
echo "sencache is set up in .venv ($(.venv/bin/python -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))"
