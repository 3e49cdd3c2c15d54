#!/usr/bin/env bash
# Set up xclip-engine in a virtual environment (.venv by default; XCLIP_VENV to change it).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh dev      # the package plus test tools (pytest, transformers, ruff)
#   bash scripts/setup.sh gpu      # the package plus the GPU extra: onnxruntime-gpu, TensorRT, Triton
#   bash scripts/setup.sh dev gpu  # both
# torch is installed first: the CPU build where there is no NVIDIA GPU, so that pip does not
# pull a multi-GB CUDA build to satisfy the package's `torch` requirement. Where `nvidia-smi -L`
# answers, torch must then be a CUDA build that sees the GPU, else the script stops (a CPU torch
# there would turn every GPU path off without a word); XCLIP_ALLOW_CPU_TORCH=1 lets it go on.
set -euo pipefail

TORCH_VERSION=${XCLIP_TORCH_VERSION:-2.13.0}
# The CUDA 12 build of torch to suggest: the GPU extra (tensorrt-cu12, onnxruntime-gpu < 1.27,
# nvidia-dali-cuda120) is CUDA 12 throughout.
TORCH_CUDA_TAG=${XCLIP_TORCH_CUDA:-cu128}

have_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# check_torch_cuda PY: where an NVIDIA GPU answers, PY's torch must be a CUDA build that sees it.
# Prints why not and returns 1 otherwise; returns 0 at once on a machine without a GPU.
check_torch_cuda() {
  local py=$1 report version cuda available fix
  have_nvidia_gpu || return 0
  if [ "${XCLIP_ALLOW_CPU_TORCH:-}" = "1" ]; then
    return 0
  fi
  if ! report=$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'); then
    echo "setup: ERROR: $py cannot import torch" >&2
    return 1
  fi
  read -r version cuda available <<<"$report"
  fix="  $py -m pip uninstall -y torch
  $py -m pip install \"torch==$TORCH_VERSION+$TORCH_CUDA_TAG\" --index-url https://download.pytorch.org/whl/$TORCH_CUDA_TAG
($TORCH_CUDA_TAG: a CUDA 12 build, like the rest of the GPU extra. Yours may differ: any cu12x build that
PyTorch publishes for torch $TORCH_VERSION and your driver runs (nvidia-smi's header shows the newest CUDA
it runs); put its tag in both places. Then run this script again.)"
  if [ "$cuda" = "None" ]; then
    cat >&2 <<EOF

setup: ERROR: this machine has an NVIDIA GPU but torch $version in $py is a CPU-only build
setup: (torch.version.cuda is None): every GPU path of xclip-engine would be off.
setup: Install torch's CUDA build from PyTorch's package index:
$fix

EOF
    return 1
  fi
  if [ "$available" != "True" ]; then
    cat >&2 <<EOF

setup: ERROR: torch $version (CUDA $cuda) in $py does not see the GPU that nvidia-smi lists
setup: (torch.cuda.is_available() is False): most often the driver is older than CUDA $cuda needs.
setup: Update the driver, or install a torch build for an older CUDA 12:
$fix

EOF
    return 1
  fi
  case $cuda in
    12.*) ;;
    *) echo "setup: WARNING: torch $version is built for CUDA $cuda; the GPU extra is CUDA 12 (tensorrt-cu12," \
            "onnxruntime-gpu < 1.27): for one CUDA in the process install torch's $TORCH_CUDA_TAG build" >&2 ;;
  esac
  echo "setup: torch $version, CUDA $cuda, sees the GPU" >&2
}

main() {
  local dev="" gpu="" arg
  for arg in "$@"; do
    case $arg in
      dev) dev=1 ;;
      gpu) gpu=1 ;;
      *) echo "usage: bash scripts/setup.sh [dev] [gpu]" >&2; return 2 ;;
    esac
  done
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local venv=${XCLIP_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  local py="$venv/bin/python"
  "$py" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

  if ! "$py" -c "import torch" >/dev/null 2>&1; then
    if have_nvidia_gpu; then
      echo "setup: NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build)" >&2
      "$py" -m pip install -q "torch==$TORCH_VERSION"
    else
      echo "setup: no GPU: installing the CPU build of torch==$TORCH_VERSION" >&2
      # Our machines' pip finds the CPU wheel on local disk. Elsewhere, install torch from
      # PyTorch's CPU index before running this script (README: "Other machines").
      "$py" -m pip install -q "torch==$TORCH_VERSION"
    fi
  fi
  # also when torch was there already: a CPU build found on local disk satisfies torch==X too
  check_torch_cuda "$py"

  if [ -n "$gpu" ] && ! have_nvidia_gpu; then
    echo "setup: WARNING: no NVIDIA GPU here (nvidia-smi -L): the gpu extra installs but nothing in it" \
         "runs on this machine" >&2
  fi
  if [ -n "$dev" ] && [ -n "$gpu" ]; then
    # dev brings onnxruntime (CPU), which gpu replaces below
    "$py" -m pip install -q -e ".[dev]"
  fi
  if [ -n "$gpu" ]; then
    # onnxruntime and onnxruntime-gpu both install the module `onnxruntime`, and the CUDA 13 TensorRT
    # packages the same modules as tensorrt-cu12: with the CPU (or CUDA 13) one present, removing it
    # would delete files the other shares, so both go and the gpu extra installs its one alone.
    if "$py" -m pip show -q onnxruntime >/dev/null 2>&1; then
      "$py" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
    fi
    if "$py" -m pip show -q tensorrt tensorrt-cu13 tensorrt-cu13-bindings >/dev/null 2>&1; then
      "$py" -m pip uninstall -y -q tensorrt tensorrt-cu13 tensorrt-cu13-libs tensorrt-cu13-bindings \
        tensorrt-cu12 tensorrt-cu12-libs tensorrt-cu12-bindings
    fi
    # pypi.nvidia.com: PyPI's tensorrt-cu12-libs is a stub that downloads the real wheel from there
    # when it is built; naming the index lets pip take that wheel directly
    "$py" -m pip install -q --extra-index-url https://pypi.nvidia.com -e ".[gpu]"
  elif [ -n "$dev" ]; then
    "$py" -m pip install -q -e ".[dev]"
  else
    "$py" -m pip install -q -e .
  fi
  echo "setup: done ($("$py" -c 'import torch; print("torch", torch.__version__)')); activate with: source $venv/bin/activate" >&2
}

# sourced (tests/export/test_gpu_runners.py calls check_torch_cuda), nothing runs
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
