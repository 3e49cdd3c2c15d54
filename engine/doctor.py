"""`xclip-engine doctor`: what this machine has, which paths run a model here, and which one auto takes.

    report = diagnose(model_source, device=None, fresh=False)   # a dict (what --json prints)
    report = diagnose("evl-b16-8f")                              # EVL too: its candidates run net(px)
    print(format_report(report))

The path table is backend auto's own verdict (engine/runtime/choice.py): measured and verified on
this machine on first use, read from the cache afterwards (`fresh` measures again). Paths that
need something this machine or this model lacks are listed with the reason.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

# the CPU features that decide which kernels exist for each precision; shown, never used to decide
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "asimd",
                "sve")
PACKAGES = ("torch", "triton", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "tensorrt-cu12", "openvino",
            "nvidia-dali-cuda120", "av", "opencv-python-headless", "transformers")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    import torch

    from .runtime.cache import cache_path, cpu_info

    cpu = cpu_info()
    info = {"cpu": cpu["model"], "cores": cpu["cores"], "torch_threads": torch.get_num_threads(),
            "cpu_features": [f for f in CPU_FEATURES if f in cpu["flags"]], "python": platform.python_version(),
            "platform": platform.platform(), "xclip_engine": _xclip_version(),
            "packages": {name: _version(name) for name in PACKAGES},
            "torch_cuda": torch.version.cuda, "gpus": [], "auto_cache": cache_path()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    if importlib.util.find_spec("openvino") is not None:
        info["openvino"] = _openvino_info()
    return info


def _openvino_info() -> dict:
    """OpenVINO's version and whether its CPU plugin runs bf16 here (backend openvino's bf16 path)."""
    try:
        import openvino

        from xclip_engine.export.ov_runner import bf16_capable, core

        return {"version": openvino.__version__, "devices": list(core().available_devices), "bf16": bf16_capable()}
    except Exception as e:   # a broken install is reported, not fatal to the report
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


def _xclip_version() -> str:
    import xclip_engine

    return xclip_engine.__version__


def _kernel_status() -> dict | None:
    try:
        from xclip_engine.kernels.selfcheck import kernel_status
    except ImportError:
        return None
    return kernel_status()


def diagnose(source=None, device=None, fresh: bool = False, precision: str | None = None, backbone=None) -> dict:
    """The machine, then auto's verdict for `source` (default: the bundled model; X-CLIP or EVL, a
    registry name without released weights runs random-init) with every path. `backbone`: the CLIP
    backbone file an official EVL checkpoint loads with."""
    from .api import default_model_path
    from .runtime.choice import PathResult, choose_for_checkpoint, is_export_folder
    from .runtime.export_choice import choose_for_export

    source = source or default_model_path()
    report = {"machine": machine(), "model": os.fspath(source)}
    if is_export_folder(source):
        choice = choose_for_export(source, device, precision, fresh=fresh)
        kind = "export folder"
        family = _folder_family(source)
    else:
        import warnings

        from .checkpoint import load_model

        kwargs = {"backbone": os.fspath(backbone)} if backbone is not None else {}
        with warnings.catch_warnings():
            # a registry name without released weights (the EVL names): timed with random weights, which
            # is what the report is about (speed and agreement); the kind "random" says so
            warnings.filterwarnings("ignore", message=".*random weights.*")
            loaded = load_model(source, **kwargs)
        choice, _ = choose_for_checkpoint(loaded.model, device, precision, fresh=fresh)
        kind = loaded.kind
        family = loaded.model.config.family
        # the runtimes of an export folder also serve this model once it is exported
        for backend, precision_ in (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("tensorrt", "fp16"),
                                    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")):
            choice.paths.append(PathResult(backend, precision_, False,
                                           f"runs an export folder: xclip-engine export --model {source}"
                                           + (" --int8" if precision_ == "int8" else
                                              " --tensorrt" if backend == "tensorrt" else "")))
    report.update(kind=kind, family=family, auto=choice.to_dict(), cached=choice.cached, kernels=_kernel_status())
    return report


def _folder_family(folder) -> str:
    import json

    try:
        with open(os.path.join(os.fspath(folder), "manifest.json"), encoding="utf-8") as f:
            return json.load(f).get("family", "xclip")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def format_report(report: dict) -> str:
    from .runtime.choice import Choice

    m = report["machine"]
    pk = m["packages"]
    lines = [
        f"machine:  {m['cpu']}, {m['cores']} cores (torch uses {m['torch_threads']} threads); "
        f"{m['platform']}, Python {m['python']}",
        f"features: {', '.join(m['cpu_features']) or '(none of ' + ', '.join(CPU_FEATURES) + ')'} "
        "(shown for reference: auto decides by measuring)",
        f"GPU:      {', '.join(m['gpus']) if m['gpus'] else 'none visible to torch'}"
        + (f" (torch built for CUDA {m['torch_cuda']})" if m["torch_cuda"] else " (torch is a CPU build)"),
        "versions: " + ", ".join(f"{k} {v}" for k, v in [("xclip-engine", m["xclip_engine"]), *pk.items()] if v),
        "missing:  " + (", ".join(k for k, v in pk.items() if not v) or "-"),
    ]
    if m.get("onnxruntime_providers"):
        lines.append(f"ONNX Runtime providers: {', '.join(m['onnxruntime_providers'])}")
    ov = m.get("openvino")
    if ov:
        lines.append(f"OpenVINO: {ov['error']}" if "error" in ov else
                     f"OpenVINO {ov['version'].split('-')[0]}: devices {', '.join(ov['devices'])}; bf16 "
                     + ("runs on this CPU" if ov["bf16"] else "not on this CPU (no bf16 path)"))
    choice = Choice.from_dict(report["auto"])
    family = {"xclip": "X-CLIP", "evl": "EVL"}.get(report.get("family"), report.get("family") or "X-CLIP")
    lines += ["", f"model:    {report['model']} ({family}, {report['kind']})",
              f"paths ({'cached verdict from ' + m['auto_cache'] if report['cached'] else 'measured now'}; "
              + ("error: logits against the folder's fp32 graphs, bound: what the export check allowed):"
                 if report["kind"] == "export folder" else
                 "error: logits against float64, bound: 4x the same-precision reference's own error):"),
              choice.table(), "", report["auto"]["note"]]
    kernels = report.get("kernels") or {}
    if m["gpus"] or any(v != "unchecked" for v in kernels.values()):
        lines += ["", "Triton kernels: " + ", ".join(f"{k} {v}" for k, v in report["kernels"].items())]
    return "\n".join(lines)


def main_json(report: dict) -> None:
    import json

    json.dump(report, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
