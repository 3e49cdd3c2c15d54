"""backend="auto" for an export folder: the precisions whose export check passed, timed here and
compared with the folder's fp32 graphs within the bound their check used (choice.py has the rule
and the shared machinery; docs/verification.md says why).

    choice = choose_for_export(folder, device)
"""

from __future__ import annotations

import json
import os

import torch

from . import cache, choice
from .choice import CALIBRATION_BATCH, Choice, PathResult
from .yardstick import FLOOR, MULTIPLE, judge


def _export_verdicts(raw: dict) -> dict[str, tuple[bool, str, float | None]]:
    """{precision ("fp32", "int8", "fp16 TensorRT", "bf16 OpenVINO", "int8 OpenVINO", ...): (passed its
    export check, why not, the logits bound it was checked with)}; a precision passes when every one
    of its graphs did."""
    out: dict[str, tuple[bool, str, float | None]] = {}
    for row in raw.get("checks") or []:
        p = row.get("precision")
        if "ok" not in row:   # written before checks had verdicts: failing fp32 graphs failed the export
            ok, why, bound = p == "fp32", "" if p == "fp32" else "checked without a verdict: re-export", None
        else:
            ok = bool(row["ok"])
            why = "" if ok else f"failed its export check ({row.get('file')})"
            bound = ((row.get("outputs") or {}).get("logits") or {}).get("bound")
        if p in out:
            ok, why, bound = out[p][0] and ok, out[p][1] or why, out[p][2] if out[p][2] is not None else bound
        out[p] = (ok, why, bound)
    return out


def export_candidates(raw: dict, device: torch.device, precision: str | None = None,
                      has_plan: bool = False) -> list[PathResult]:
    gpu = device.type == "cuda"
    have = raw.get("precisions") or []
    checked = _export_verdicts(raw)
    ort = choice.module_available("onnxruntime")
    paths = []
    for p in ("fp32", "fp16", "int8"):
        if p not in have:
            paths.append(PathResult("onnxruntime", p, False, f"no {p} graphs in the folder (export --{p})"
                                    if p != "fp32" else "no fp32 graphs in the folder"))
            continue
        ok, why, _ = checked.get(p, (False, "never checked (exported with --no-check)", None))
        if not ort:
            paths.append(PathResult("onnxruntime", p, False, "onnxruntime is not installed: pip install "
                                    "'xclip-engine[export]'"))
        elif p == "fp16" and not gpu:
            paths.append(PathResult("onnxruntime", p, False, "fp16 graphs are for GPUs (ONNX Runtime's CPU "
                                    "provider emulates fp16)"))
        elif p == "int8" and gpu:
            paths.append(PathResult("onnxruntime", p, False, "int8 graphs are for CPUs (dynamic quantization)"))
        elif not ok:
            paths.append(PathResult("onnxruntime", p, False, why))
        else:
            paths.append(PathResult("onnxruntime", p, True))
    if gpu and has_plan and choice.module_available("tensorrt"):
        ok, why, _ = checked.get("fp16 TensorRT", (False, "the engines were never checked", None))
        paths.append(PathResult("tensorrt", "fp16", ok, why))
    else:
        paths.append(PathResult("tensorrt", "fp16", False, "needs a CUDA GPU" if not gpu else
                                "no TensorRT engine in the folder (export --tensorrt)" if not has_plan else
                                "the tensorrt package is not installed"))
    paths += openvino_candidates(have, checked, device)
    if precision is not None:
        if precision not in ("fp32", "bf16", "fp16", "int8"):
            raise ValueError(f"precision {precision!r} is not one of the export folder's fp32, fp16, int8 (graphs) "
                             "or bf16 (its fp32 graphs on OpenVINO)")
        for p in paths:
            if p.precision != precision and p.available:
                p.available, p.why = False, f"precision {precision} asked for"
    return paths


def openvino_bf16() -> tuple[bool, str]:
    """Whether OpenVINO runs bf16 on this CPU (module-level so tests can fake a machine)."""
    from xclip_engine.export.ov_runner import bf16_capable

    if bf16_capable():
        return True, ""
    return False, "OpenVINO does not list BF16 among this CPU's capabilities"


def openvino_candidates(have, checked: dict, device: torch.device) -> list[PathResult]:
    """OpenVINO's paths: fp32 and bf16 (both the fp32 graphs) and int8 (the int8 graphs), on a CPU.

    Each needs its graphs' export check: the fp32 check for fp32 and bf16, and where the export ran
    with openvino installed, the check of OpenVINO itself ("bf16 OpenVINO", "int8 OpenVINO")."""
    if not choice.module_available("openvino"):
        why = "openvino is not installed: pip install 'xclip-engine[openvino]'"
        return [PathResult("openvino", p, False, why) for p in ("fp32", "bf16", "int8")]
    paths = []
    for p in ("fp32", "bf16", "int8"):
        graph = "int8" if p == "int8" else "fp32"
        if device.type != "cpu":
            paths.append(PathResult("openvino", p, False, "OpenVINO runs on the CPU (device cpu)"))
            continue
        if graph not in have:
            paths.append(PathResult("openvino", p, False, f"no {graph} graphs in the folder"
                                    + (" (export --int8)" if graph == "int8" else "")))
            continue
        ok, why, _ = checked.get(graph, (False, "never checked (exported with --no-check)", None))
        # OpenVINO's own check, where the export ran one, decides over the ONNX Runtime one
        if f"{p} OpenVINO" in checked:
            ok, why, _ = checked[f"{p} OpenVINO"]
        if ok and p == "bf16":
            ok, why = openvino_bf16()
        paths.append(PathResult("openvino", p, ok, "" if ok else why))
    return paths


def load_export_path(folder: str, path: PathResult, device: torch.device):
    from xclip_engine.export.runtime import load_runtime

    return load_runtime(folder, backend=path.backend, device=device, precision=path.precision)


def measure_export(folder: str, raw: dict, device: torch.device, paths: list[PathResult],
                   echo=choice.stderr_echo) -> list[PathResult]:
    """Time every available precision; verify each against the folder's fp32 graph here, within
    the bound its export check recorded (fp32 itself passed the export check)."""
    bounds = {p: b for p, (_, _, b) in _export_verdicts(raw).items()}
    bounds["tensorrt fp16"] = bounds.get("fp16 TensorRT")
    # OpenVINO: fp32 within the fp32 graphs' bound; bf16 and int8 within their OpenVINO check's bound,
    # else (an export without openvino) bf16 by the yardstick's bf16 rule and int8 by the int8 graphs'
    bounds["openvino fp32"] = bounds.get("fp32")
    bounds["openvino bf16"] = bounds.get("bf16 OpenVINO") or MULTIPLE * FLOOR["bf16"]
    bounds["openvino int8"] = bounds.get("int8 OpenVINO") or bounds.get("int8")
    base = None
    for p in sorted(paths, key=lambda q: (q.backend, q.precision) != ("onnxruntime", "fp32")):
        if not p.available:
            continue
        try:
            model = load_export_path(folder, p, device)
            px, ids = choice.calibration_input(model.config, device)
            with torch.inference_mode():
                args = choice.net_args(model.net, px, ids)     # (px, text) for X-CLIP, (px,) for EVL
                got = model.net(*args).float().cpu()
            if base is None and (p.backend, p.precision) == ("onnxruntime", "fp32"):
                base = got    # the yardstick for the others here: it passed its export check
                p.verified, p.why = True, "passed the export check; the other precisions are compared with it"
            elif base is None:
                p.verified, p.why = True, "verified by its export check (no fp32 graphs to compare with here)"
            else:
                key = p.name if p.backend in ("tensorrt", "openvino") else p.precision
                bound = bounds.get(key) or MULTIPLE * FLOOR.get(p.precision, 1e-3)
                v = judge(f"{p.name} logits", got, base, bound=bound, classes=True)
                p.verified, p.error, p.bound = v.ok, v.error, v.bound
                p.why = "" if v.ok else f"disagrees with the fp32 graph here: {v.why}"
            with torch.inference_mode():
                p.seconds = choice.time_call(model.net, *args) / CALIBRATION_BATCH
        except Exception as e:
            p.available, p.verified, p.why = False, False, f"failed to run: {type(e).__name__}: {e}"
        choice.say(echo, f"auto:   {p.name}: " + (f"{p.seconds:.3f} s/video" if p.seconds is not None else p.why))
    return paths


def _openvino_version() -> str | None:
    if not choice.module_available("openvino"):
        return None
    import importlib.metadata

    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:   # importable without its metadata: ask the module
        import openvino

        return openvino.__version__


def choose_for_export(folder, device=None, precision: str | None = None, echo=choice.stderr_echo,
                      fresh: bool = False) -> Choice:

    dev = choice.resolve_device(device)
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        # load_runtime's read_manifest names what is wrong with the folder; auto just defers to it
        return Choice("onnxruntime", precision or "fp32", f"auto: onnxruntime (the manifest is unreadable: {e})")
    has_plan = bool(raw.get("tensorrt"))
    paths = export_candidates(raw, dev, precision, has_plan)
    runnable = [p for p in paths if p.available]
    if len(runnable) == 1:
        # one path runs here (say precision bf16: OpenVINO's alone): nothing to time or compare it
        # with, and choice.pick, which falls back on an fp32 path, may find none
        only = runnable[0]
        asked = f" (precision {precision} asked for)" if precision else ""
        return Choice(only.backend, only.precision, f"auto: {only.name}, the only path that runs here{asked}", paths)
    hashes = {role: {p: (e or {}).get("sha256") for p, e in (g or {}).items()}
              for role, g in (raw.get("graphs") or {}).items()}
    fp = cache.fingerprint(dev, {"export": hashes, "tensorrt": has_plan, "precision": precision,
                                 "checks": [r.get("ok") for r in raw.get("checks") or []],
                                 # another OpenVINO compiles the graphs anew: measure its paths again
                                 "openvino": _openvino_version()})
    return choice.decide(fp, lambda ps: measure_export(folder, raw, dev, ps, echo), paths, echo,
                   f"the export folder {folder}", fresh)
