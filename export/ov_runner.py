"""OpenVINO runner for an export folder: the `net` behind `xe.load(DIR, backend="openvino")`.

The same graphs as ONNX Runtime's (ort_runner.py), compiled by OpenVINO for the CPU, in three precisions:

    fp32  the fp32 graph, inference precision f32 (asked for explicitly: on a CPU with AMX or
          avx512_bf16 OpenVINO's default is bf16, which would make "fp32" a bf16 path)
    bf16  the fp32 graph, inference precision bf16: OpenVINO runs its matmuls and convolutions in
          bf16. Only where OpenVINO lists BF16 among the CPU's optimization capabilities.
    int8  the int8 graphs (video.int8.onnx: static int8, export/quantize.py; X-CLIP's text entry
          names the fp32 text graph), with bf16 for what is not quantized where the CPU has it,
          else f32

As in ort_runner.GraphSession, a graph's content is checked against the manifest's sha256 before
OpenVINO reads it. Compiled graphs are cached by OpenVINO itself in DIR/cache/openvino (when the
folder is writable): its cache key is a hash of the model it is given, read from the verified file,
so an entry is never served for another graph. OpenVINO runs here on the CPU only; a GPU runs the
folder on backend "onnxruntime" or "tensorrt".
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from .manifest import CACHE_DIR, ExportFolderError, Manifest
from .ort_runner import OrtNet, _writable, check_io_names

OPENVINO_INSTALL = "pip install 'xclip-engine[openvino]'"
OV_PRECISIONS = ("fp32", "bf16", "int8")
# bf16 is not a graph file of the folder: it is the fp32 graph run with the bf16 inference hint
GRAPH_FILE = {"fp32": "fp32", "bf16": "fp32", "int8": "int8"}


class OpenVINOUnavailable(NotImplementedError):
    """The openvino package is missing, or this CPU lacks what the precision asked for needs."""


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise OpenVINOUnavailable(f"backend 'openvino' needs the openvino package, which is not installed: "
                                  f"{OPENVINO_INSTALL} (or use backend 'onnxruntime')") from None
    return openvino


_core = None


def core():
    """One OpenVINO Core per process: it holds the loaded device plugins, which are slow to start."""
    global _core
    if _core is None:
        _core = require_openvino().Core()
    return _core


def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 on this CPU (it says so in OPTIMIZATION_CAPABILITIES)."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def inference_hint(precision: str) -> str:
    """The INFERENCE_PRECISION_HINT of a precision on this CPU; refuses bf16 where the CPU has none."""
    if precision == "fp32":
        return "f32"
    if precision == "bf16":
        if not bf16_capable():
            raise OpenVINOUnavailable("precision 'bf16' on backend 'openvino' needs a CPU with bf16 support "
                                      "(OpenVINO does not list BF16 among this CPU's capabilities); use precision "
                                      "'fp32' or 'int8'")
        return "bf16"
    # int8: the quantized ops run in int8 either way; the rest as fast as the CPU allows
    return "bf16" if bf16_capable() else "f32"


def check_device(device: torch.device) -> None:
    if device.type != "cpu":
        raise ValueError(f"backend 'openvino' runs on the CPU, not on {device}: for a GPU load the folder with "
                         "backend='onnxruntime' (its fp32 or fp16 graphs) or backend='tensorrt' (its TensorRT "
                         "engines), or pass device='cpu'")


def check_precision(precision: str) -> str:
    if precision not in OV_PRECISIONS:
        raise ValueError(f"backend 'openvino' runs precision fp32, bf16 or int8, not {precision!r} (the fp16 graphs "
                         "are for GPUs: backend 'onnxruntime' or 'tensorrt')")
    return GRAPH_FILE[precision]


class OvGraph:
    """One graph of an export folder compiled by OpenVINO for the CPU; `run(**feeds)` returns its
    outputs in the manifest's order, as GraphSession.run does."""

    def __init__(self, manifest: Manifest, role: str, precision: str, device=None):
        check_device(torch.device(device or "cpu"))
        file_precision = check_precision(precision)
        ov = require_openvino()
        self.role, self.precision = role, precision
        cache_dir = os.path.join(manifest.folder, CACHE_DIR, "openvino")
        writable = _writable(cache_dir)    # made first, so that the hash below is recorded in cache/ too
        # the content check comes first: OpenVINO reads only a graph that is the one exported
        self.path, self.sha256 = manifest.verified(role, file_precision)
        self.expected_inputs = list(manifest.inputs[role])
        self.expected_outputs = list(manifest.outputs[role])
        hint = inference_hint(precision)
        config = {"INFERENCE_PRECISION_HINT": hint,
                  # one thread setting for every runtime: torch's (see ort_runner._session)
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if writable:
            config["CACHE_DIR"] = cache_dir
        try:
            # read_model, then compile the Model object: OpenVINO keys its cache on the model's
            # content then, where a path given to compile_model would be keyed on the file's name
            model = core().read_model(self.path)
            self.compiled = core().compile_model(model, "CPU", config)
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            raise ExportFolderError(f"{self.path}: OpenVINO cannot load this graph ({type(e).__name__}: {first_line}); "
                                    "load the folder with backend 'onnxruntime', or re-export it") from None
        del model
        self._check_names()
        self._outputs = [self.compiled.output(name) for name in self.expected_outputs]
        self._request = self.compiled.create_infer_request()
        # an infer request runs one inference at a time; ONNX Runtime's session.run may be called
        # from several threads at once, so calls here wait for each other instead of corrupting
        self._lock = threading.Lock()
        self.info = {"source": os.path.basename(self.path), "precision": precision, "inference_precision": hint,
                     "threads": config["INFERENCE_NUM_THREADS"], "cache_dir": config.get("CACHE_DIR"),
                     "loaded_from_cache": _loaded_from_cache(self.compiled), "openvino": ov.__version__}

    def _check_names(self):
        check_io_names(self, [p.get_any_name() for p in self.compiled.inputs],
                       [p.get_any_name() for p in self.compiled.outputs])

    def run(self, **feeds) -> list[np.ndarray]:
        with self._lock:
            # share_outputs False (the default): the arrays returned are copies, not views of the
            # request's buffers, which the next call overwrites
            result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return [np.asarray(result[port]) for port in self._outputs]

    def runtime_info(self) -> dict:
        return {"device": "CPU", "openvino": self.info["openvino"],
                "inference_precision": self.info["inference_precision"]}


def _loaded_from_cache(compiled) -> bool | None:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:   # a property older OpenVINO versions do not have: unknown
        return None


class OvNet(OrtNet):
    """OrtNet's calls (`encode_text`, `encode_video`, `__call__`, ...) on graphs compiled by OpenVINO."""

    backend = "openvino"
    graph_class = OvGraph

    def __init__(self, manifest: Manifest, precision: str = "fp32", device=None):
        check_device(torch.device(device or "cpu"))     # before anything is read
        check_precision(precision)
        require_openvino()
        super().__init__(manifest, precision, device)
