"""backend="auto": the fastest path that computes the right answers on this machine, and why.

    backend, precision, note = choose_backend(source, device, precision)

The order follows what was measured (benchmarks/ladder.py, DESIGN.md section 5):
- an export folder runs on its own runtime: TensorRT on a GPU when the folder has an engine plan
  and tensorrt imports, else ONNX Runtime (its default precision: fp16 on a GPU, fp32 on a CPU);
- a checkpoint on a CUDA GPU: the triton backend when triton imports, else the reference;
- a checkpoint on a CPU with AMX bf16: the reference backend in bf16 (3-4x the fp32 matmul rate,
  top-1 equal to fp32 on our parity checks); without AMX, bf16 has no fast kernels: fp32.
The capability probes are module-level functions so tests can monkeypatch them.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .fast_cpu import has_amx_bf16

EXPORT_MANIFEST = "manifest.json"   # export/manifest.py MANIFEST; not imported: export needs onnx


def cuda_available() -> bool:
    return torch.cuda.is_available()


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def amx_bf16() -> tuple[bool, str]:
    return has_amx_bf16()


def is_export_folder(source) -> bool:
    return source is not None and os.path.isfile(os.path.join(os.fspath(source), EXPORT_MANIFEST))


def _has_trt_plan(folder) -> bool:
    import json

    try:
        with open(os.path.join(os.fspath(folder), EXPORT_MANIFEST)) as f:
            return bool(json.load(f).get("tensorrt"))
    except (OSError, ValueError):
        return False   # read_manifest, on load, says what is wrong with the folder


def choose_backend(source, device=None, precision: str | None = None) -> tuple[str, str | None, str]:
    """(backend, precision or None for the backend's default, a one-line reason) for `source`."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if cuda_available() else "cpu")
    gpu = dev.type == "cuda"
    if is_export_folder(source):
        if gpu and precision in (None, "fp16") and _has_trt_plan(source) and module_available("tensorrt"):
            return "tensorrt", None, "auto: an export folder with a TensorRT plan, on a GPU: tensorrt (fp16)"
        where = "a GPU" if gpu else "the CPU"
        why = "" if not gpu else " (no TensorRT plan in the folder or no tensorrt package)"
        return "onnxruntime", precision, f"auto: an export folder on {where}: onnxruntime{why}"
    if gpu:
        if precision not in (None, "fp32"):
            return "reference", precision, f"auto: {precision} asked for: the reference backend in {precision}"
        if module_available("triton"):
            return "triton", None, "auto: a CUDA GPU and triton: the triton backend (fused kernels, fp32)"
        return "reference", None, "auto: a CUDA GPU without the triton package: the reference backend (fp32)"
    if precision is not None:
        return "reference", precision, f"auto: {precision} asked for: the reference backend in {precision}"
    amx, why = amx_bf16()
    if amx:
        return "reference", "bf16", f"auto: {why}: the reference backend in bf16 (fp32 layer norms and logits)"
    return "reference", None, f"auto: {why}: the reference backend in fp32"
