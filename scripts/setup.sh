#!/usr/bin/env bash
# Set up xclip-engine in a virtual environment (.venv by default; XCLIP_VENV to change it).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh dev      # the package plus test tools (pytest, transformers, ruff)
# torch is installed first: the CPU build where there is no NVIDIA GPU, so that pip does not
# pull a multi-GB CUDA build to satisfy the package's `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${XCLIP_VENV:-.venv}
EXTRA=${1:-}
TORCH_VERSION=${XCLIP_TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build)" >&2
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU: installing the CPU build of torch==$TORCH_VERSION" >&2
    # Our machines' pip finds the CPU wheel on local disk. Elsewhere, install torch from
    # PyTorch's CPU index before running this script (README: "Other machines").
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
fi

if [ "$EXTRA" = "dev" ]; then
  "$PY" -m pip install -q -e ".[dev]"
else
  "$PY" -m pip install -q -e .
fi
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)')); activate with: source $VENV/bin/activate" >&2
