#!/usr/bin/env bash
# Everything that needs a GPU, in one command, with one report (markdown + JSON) of every figure.
#
#   bash scripts/gpu_check.sh [OUT]              # on a GPU machine, from a fresh clone (about 8 min)
#   bash scripts/gpu_check.sh --cpu-half [OUT]   # the same steps where no GPU is needed (CI runs it)
#   bash scripts/gpu_check.sh --no-setup [OUT]   # a GPU machine without network: its own python
#                                                # (XCLIP_PYTHON, default python3) with torch and triton
#                                                # already there; carry what it lacks (PyAV, ftfy) as
#                                                # wheels on PYTHONPATH
#
# Steps, each bounded in time; a failing step is recorded and the next one still runs:
#   setup     bash scripts/setup.sh dev gpu (torch's CUDA build checked, onnxruntime-gpu, TensorRT, DALI)
#   doctor    xclip-engine doctor --json: the machine, every path, auto's measured choice
#   parity    pytest tests/parity (kernels compiled for the GPU, judged against float64 references)
#   gpu-tests pytest of the GPU-only tests (TensorRT, ONNX Runtime CUDA, DALI GPU decode, cuda:1)
#   kernels   benchmarks/bench_<kernel>.py for every Triton kernel, and the triton backend
#   ladder    benchmarks/ladder.py --quick with the GPU rungs (reference, auto, triton, tensorrt_fp16)
# The report is OUT/gpu_check.md and OUT/gpu_check.json (default OUT: benchmarks/results/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."

CPU_HALF=0
SETUP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-half) CPU_HALF=1; SETUP=0; shift ;;
    --no-setup) SETUP=0; shift ;;
    -*) echo "usage: bash scripts/gpu_check.sh [--cpu-half | --no-setup] [OUT]" >&2; exit 2 ;;
    *) break ;;
  esac
done
OUT=${1:-benchmarks/results/gpu_check}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
VENV=${XCLIP_VENV:-.venv}
if [ -n "${XCLIP_PYTHON:-}" ]; then PY=$XCLIP_PYTHON
elif [ "$SETUP" -eq 0 ] && [ ! -x "$VENV/bin/python" ]; then PY=python3
else PY=$VENV/bin/python
fi
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
export XCLIP_ENGINE_CACHE="$OUT/auto_cache"   # a fresh verdict: doctor and the ladder measure on this run

step() {   # step NAME TIMEOUT_S COMMAND...: run it, log it, record rc and seconds
  local name=$1 limit=$2; shift 2
  local log="$OUT/logs/$name.log" t0 rc
  echo "gpu_check: $name ($*)" >&2
  t0=$(date +%s%N)
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "ms": %d, "limit_s": %d, "log": "%s"}\n' "$name" "$rc" \
    $(( ($(date +%s%N) - t0) / 1000000 )) "$limit" "$log" >> "$STEPS"
  [ "$rc" -eq 0 ] || echo "gpu_check: $name exited $rc (see $log)" >&2
  return 0
}

if [ "$CPU_HALF" -eq 0 ]; then
  if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L fails); run with --cpu-half for the CPU steps" >&2
    exit 2
  fi
  if [ "$SETUP" -eq 1 ]; then step setup 420 bash scripts/setup.sh dev gpu; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/logs/nvidia-smi.txt" 2>&1
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: no $PY: run bash scripts/setup.sh dev first (or set XCLIP_PYTHON)" >&2
  exit 2
fi
# xclip_engine from this checkout, installed or not: through a folder that holds only a link to it.
# The checkout itself on PYTHONPATH would put our kernels/ where transformers (5.25 on) imports the
# Hugging Face `kernels` package by that top-level name, and break every transformers model here.
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
ln -s "$PWD/xclip_engine" "$SHIM/xclip_engine"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"

GPU_TESTS=(tests/export/test_tensorrt.py tests/export/test_gpu_runners.py tests/video/test_dali_checks.py
           tests/video/test_dali_pipeline.py tests/parity/test_triton_backend.py)
KERNELS=(frame_attention message_attention prompt_attention layer_norm quick_gelu triton_backend adjacent_attention)

step doctor 300 bash -c "'$PY' -m xclip_engine.engine.cli doctor --json > '$OUT/doctor.json'"
if [ "$CPU_HALF" -eq 0 ]; then
  step parity 600 "$PY" -m pytest -q -rs tests/parity --junitxml="$OUT/parity.xml"
  step gpu-tests 420 "$PY" -m pytest -q -rs "${GPU_TESTS[@]}" --junitxml="$OUT/gpu-tests.xml"
  for k in "${KERNELS[@]}"; do
    step "bench_$k" 300 "$PY" "benchmarks/bench_$k.py" --out "$OUT/bench"
  done
  step ladder 900 "$PY" benchmarks/ladder.py --quick --out "$OUT/ladder" --work "$OUT/ladder_work" \
    --rungs ours_fp32 ours_auto triton tensorrt_fp16 ort_fp32
else
  # what runs without a GPU: the GPU tests skip with their reasons, the benchmarks run their smoke
  # path under Triton's interpreter, the ladder's GPU rungs say why they cannot run
  step gpu-tests 300 "$PY" -m pytest -q -rs tests/export/test_tensorrt.py --junitxml="$OUT/gpu-tests.xml"
  for k in frame_attention quick_gelu; do
    step "bench_$k" 300 "$PY" "benchmarks/bench_$k.py" --smoke --dtypes fp32
  done
  step ladder 300 "$PY" benchmarks/ladder.py --smoke --json-only --out "$OUT/ladder" \
    --rungs ours_auto triton tensorrt_fp16
fi

"$PY" scripts/gpu_check_report.py "$OUT" --mode "$([ "$CPU_HALF" -eq 1 ] && echo cpu-half || echo gpu)"
