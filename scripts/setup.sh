#!/usr/bin/env bash
# Create .venv and install a2bs with everything it needs. Idempotent: a second run is quick.
# torch==2.13.0 goes first: pip takes its CPU wheel from the local disk (other versions pull multi-GB CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.a2bs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
  # Naming torch==2.13.0 again keeps the resolver from swapping in a CUDA build for any dependency.
  python -m pip install --quiet "torch==2.13.0" -e ".[test,synth]"
  touch "$stamp"
fi
