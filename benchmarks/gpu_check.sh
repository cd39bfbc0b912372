#!/usr/bin/env bash
# The whole GPU path in one command, with its figures in one table at the end (see gpu_check.py).
# Run it from the repo root (it reads data/shakespeare_char); settings pass through:
#   bash benchmarks/gpu_check.sh --full=True
# PYTHON=path/to/python picks the interpreter (default: python3 on PATH)
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
