"""`load_runtime`: an export folder as an xclip_engine Model, on ONNX Runtime, TensorRT or OpenVINO.

engine/api.py calls this for `xe.load(DIR, backend="onnxruntime" | "tensorrt" | "openvino")`. The folder holds
everything (graphs, vocabulary, manifest), so nothing else is read. The returned Model has the
reference API (encode_text, encode_video, logits, classify) because the runtime nets below have
the four calls and `.config` that Model uses. An EVL folder (family "evl", read from the manifest)
gives a net with EVL's calls (`net(pixel_values)` -> class logits, `encode_video`, `.config` an
EVLConfig) and no tokenizer: its labels are the class names the manifest records.
"""

from __future__ import annotations

import os

import torch

from xclip_engine.engine.api import Model
from xclip_engine.engine.runtime.device import default_device
from xclip_engine.engine.tokenizer import ClipTokenizer

from .manifest import PRECISIONS, ExportFolderError, check_name, read_manifest, verify_file

RUNTIME_BACKENDS = ("onnxruntime", "tensorrt", "openvino")


def default_precision(manifest, device: torch.device) -> str:
    """fp32 on CPU (fp16 has no fast CPU kernels; int8 only when asked for), fp16 on a GPU when exported."""
    have = manifest.precisions()
    if device.type == "cuda" and "fp16" in have:
        return "fp16"
    return "fp32" if "fp32" in have else have[0]


def check_vocabulary(manifest) -> None:
    """vocab.json and merges.txt: present, plain files of the folder, and their sha256 when the manifest has it.

    The tokenizer reads these two names from the folder (ClipTokenizer.from_folder). Manifests of
    format 1 name them ("vocab": {"vocab": "vocab.json", ...}) without a hash, so their content can
    be checked only where the manifest gives a file entry ({"file", "bytes", "sha256"}) instead.
    """
    folder = manifest.folder
    names = manifest.raw.get("vocab") if isinstance(manifest.raw.get("vocab"), dict) else {}
    for key, name in (("vocab", "vocab.json"), ("merges", "merges.txt")):
        what = f"tokenizer vocabulary ({name})"
        check_name(folder, name, what)       # the name the tokenizer reads: no symlink
        if not os.path.isfile(os.path.join(folder, name)):
            raise ExportFolderError(f"{folder}: {name} (the tokenizer vocabulary) is missing: a partial copy; "
                                    "copy the whole folder again or re-export it")
        entry = names.get(key)
        if isinstance(entry, dict):
            if entry.get("file") != name:
                raise ExportFolderError(f"{folder}/manifest.json: the {what} entry names {entry.get('file')!r}, "
                                        f"the tokenizer reads {name}; re-export the folder")
            verify_file(folder, entry, what)


def load_runtime(source, backend: str = "onnxruntime", device=None, precision: str | None = None,
                 fusion: bool = True) -> Model:
    """Load the export folder `source` for `backend`. precision: fp32 | fp16 | int8 on ONNX Runtime (the graph
    files), fp16 on TensorRT, fp32 | bf16 | int8 on OpenVINO (bf16: the fp32 graphs run in bf16); default:
    default_precision, fp32 on OpenVINO."""
    if backend not in RUNTIME_BACKENDS:
        raise ValueError(f"backend {backend!r} is not a runtime backend ({', '.join(RUNTIME_BACKENDS)})")
    folder = os.fspath(source)
    manifest = read_manifest(folder)
    tokenizer = None                     # EVL: a closed-set classifier, no text tower and no vocabulary
    if manifest.family == "xclip":
        check_vocabulary(manifest)
        tokenizer = ClipTokenizer.from_folder(folder)
    # OpenVINO runs on the CPU: no device given means the CPU there, on a GPU machine too
    dev = torch.device("cpu") if backend == "openvino" and device is None else default_device(device)
    if backend == "openvino":
        from .ov_runner import OvNet

        net = OvNet(manifest, precision or "fp32", dev)
    elif backend == "tensorrt":
        if precision not in (None, "fp16"):
            raise ValueError(f"backend 'tensorrt' runs the fp16 engine of the folder, not {precision}")
        from .trt_runner import TrtNet

        net = TrtNet(manifest, dev)
    else:
        if precision is not None and precision not in PRECISIONS:
            also = " (bf16 runs the fp32 graphs on backend 'openvino')" if precision == "bf16" else ""
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} on backend "
                             f"'onnxruntime'{also}")
        from .ort_runner import OrtNet

        net = OrtNet(manifest, precision or default_precision(manifest, dev), dev, fusion=fusion)
    return Model(net, tokenizer, device=dev, labels=manifest.labels, origin=folder, kind="export", backend=backend)
