#!/usr/bin/env bash
# Every GPU code path once, as a table: run on a CUDA machine (`bash scripts/gpu_check.sh`).
# Uses .venv when present, else the machine's python (a GPU box may have torch but not the venv).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
PYTHONPATH=. "$PY" scripts/gpu_check.py
