"""`export_model`: a model (X-CLIP or EVL) to a self-contained ONNX folder, checked against the reference.

Steps: load the model (any source `xe.load` reads); export its graphs with torch.onnx.export (the
torch.export-based exporter, opset 18) from the one model definition switched to the export ops
(graphs.py): X-CLIP's text and video graphs (dynamic B, K and token length), EVL's one video graph
(dynamic B); `onnx.checker` each file; add the fp16 (precision.py) and static int8 (quantize.py)
variants asked for;
write the tokenizer vocabulary (X-CLIP) and the manifest (manifest.py) last; run every precision in
ONNX Runtime against the reference (checks.py) and print the table; with `tensorrt`, build the
engines (trt_runner.py), which needs a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field

import onnx
import torch

from xclip_engine.engine.checkpoint import load_model
from xclip_engine.engine.io.labels import load_labels
from xclip_engine.engine.model import EVL, XCLIP
from xclip_engine.engine.tokenizer import ClipTokenizer

from . import checks
from .graphs import FAMILY_GRAPHS, family_of, graph_modules
from .manifest import file_entry, preprocessing, read_manifest, write_manifest
from .precision import expand_reduce_l2, to_fp16

OPSET = 18
OUR_FILES = (".onnx", ".plan", ".onnx.data", ".tmp")
PROTOBUF_LIMIT = 2**31 - 1


class ExportError(RuntimeError):
    """The export could not be made (bad --out, a graph too large for one file)."""


class ExportCheckFailed(ExportError):
    """The graphs were written but disagree with the reference model (the table says which)."""


@dataclass
class ExportResult:
    folder: str
    rows: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    samples: tuple | None = None         # (reference outputs, ids, pixels) of the check
    ok: bool = True
    table: str = ""


def _check_folder(out: str) -> None:
    """--out must be new, empty, or an earlier export (whose files are replaced): nothing else is touched."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out}: is a file; give a folder (new, empty, or an earlier export)")
    entries = os.listdir(out) if os.path.isdir(out) else []
    if entries and "manifest.json" not in entries and not all(e.endswith(OUR_FILES) or e == "cache" for e in entries):
        raise ExportError(f"--out {out}: a folder with other files in it and no manifest.json; give a new or empty "
                          "folder (an earlier export folder is overwritten)")


def _prepare_folder(out: str) -> None:
    _check_folder(out)
    os.makedirs(out, exist_ok=True)
    entries = os.listdir(out)
    # the manifest goes first: an export interrupted from here on leaves a folder that no loader accepts
    for name in ["manifest.json", *entries]:
        path = os.path.join(out, name)
        if name == "cache" and os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path) and (name == "manifest.json" or name.endswith(OUR_FILES)
                                       or name in ("vocab.json", "merges.txt")):
            os.remove(path)


def _save(model_proto: onnx.ModelProto, path: str) -> dict:
    if model_proto.ByteSize() > PROTOBUF_LIMIT:
        raise ExportError(f"{path}: the graph is over 2 GiB, which one ONNX file cannot hold; models this large "
                          "are not supported by this exporter yet")
    onnx.save(model_proto, path)
    onnx.checker.check_model(path, full_check=True)
    return file_entry(os.path.dirname(path), os.path.basename(path))


def _example_inputs(config):
    # example sizes other than 0 and 1, so torch.export keeps B, K and L symbolic
    px = torch.randn(2, config.num_frames, 3, config.image_size, config.image_size)
    if family_of(config) == "evl":
        return None, px, None
    ids = torch.zeros(3, 9, dtype=torch.long)
    ids[:, 0], ids[:, 1:5], ids[:, 5] = 49406, 320, 49407
    return ids, px, torch.randn(3, config.embed_dim)


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's notes that are not about this model (it lists torchvision ops it skips
    when torchvision is absent, and torch.export's own deprecation warnings)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)


def _graph_specs(config):
    """role -> (example inputs, dynamic shapes) of each graph of `config`'s family."""
    from torch.export import Dim

    ids, px, text = _example_inputs(config)
    b = Dim("B", min=1)
    if family_of(config) == "evl":
        return {"video": ((px,), {"pixel_values": {0: b}})}
    k, length = Dim("K", min=1), Dim("L", min=1, max=config.context_length)
    return {"text": ((ids,), {"input_ids": {0: k, 1: length}}),
            "video": ((px, text), {"pixel_values": {0: b}, "text_features": {0: k}})}


def export_graphs(model: XCLIP | EVL, opset: int = OPSET) -> dict[str, onnx.ModelProto]:
    """The fp32 graphs of `model` as ModelProtos, by role: text and video for X-CLIP, video for EVL
    (the model's ops are restored after)."""
    config = model.config
    names = FAMILY_GRAPHS[family_of(config)]
    previous = model.ops
    graphs = {}
    try:
        modules = graph_modules(model)
        with torch.no_grad(), _quiet_exporter():
            for role, (example, dynamic) in _graph_specs(config).items():
                inputs, outputs = names[role]
                prog = torch.onnx.export(modules[role], example, input_names=list(inputs),
                                         output_names=list(outputs), dynamic_shapes=dynamic, opset_version=opset,
                                         dynamo=True, verbose=False)
                graphs[role] = prog.model_proto
    finally:
        model.use_ops(previous)
    for role, g in graphs.items():
        expand_reduce_l2(g)
        onnx.helper.set_model_props(g, {"xclip_engine_graph": role})
    return graphs


def _versions() -> dict:
    import onnxruntime

    import xclip_engine

    return {"xclip_engine": xclip_engine.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": OPSET}


def _load_source(source, arch, backbone, random_init):
    """load_model(source, ...); `backbone` (EVL's CLIP backbone file) only when given, so this works
    with a load_model that does not take it yet."""
    kwargs = {"arch": arch}
    if random_init:
        kwargs["random_init"] = True
    if backbone is not None:
        import inspect

        if "backbone" not in inspect.signature(load_model).parameters:
            raise ExportError("--backbone: this xclip-engine cannot load an EVL checkpoint with a separate backbone "
                              "yet; export a checkpoint of ours (xclip-engine saves EVL with its backbone)")
        kwargs["backbone"] = os.fspath(backbone)
    return load_model(source, **kwargs)


def _class_labels(config, labels):
    """EVL's class names, one per logit (None: not known); X-CLIP's label set as given."""
    if labels is None or family_of(config) != "evl":
        return labels
    labels = list(labels)
    if len(labels) != config.num_classes:
        raise ValueError(f"{len(labels)} class labels for an EVL model of {config.num_classes} classes; give one "
                         "label per class, in the order of the logits")
    return labels


def export_model(source=None, out: str = "xclip-export", *, model: XCLIP | EVL | None = None, tokenizer=None,
                 labels=None, arch: str | None = None, backbone=None, random_init: bool = False,
                 fp16: bool = False, int8: bool = False, calibrate=None, calibrate_clips: int | None = None,
                 tensorrt: bool = False, max_batch: int = 8, max_labels: int = 400, check: bool = True,
                 check_labels=None, check_batch: int = 2, echo=print) -> ExportResult:
    """Export `source` (anything xe.load reads) or an in-memory `model` (an XCLIP or an EVL) to the folder `out`.

    EVL: one video graph (pixel_values -> logits, video_embeds); `labels` are its class names, one per
    logit; `backbone` is the CLIP backbone file an official EVL checkpoint loads with. `int8`: a static
    int8 video graph (quantize.py), calibrated on `calibrate` (a folder of clips, or pixel values
    [N, T, 3, S, S] already preprocessed; None: the built-in clips), `calibrate_clips` of them (8);
    X-CLIP's int8 precision runs the fp32 text graph (see _write_int8). `check_batch`:
    videos in the check's sample (2; a full-size test may take 1). Raises
    ExportCheckFailed when the fp32 graphs disagree with the reference, and
    trt_runner.TensorRTUnavailable when `tensorrt` is asked for where it cannot run (after the
    ONNX files and the manifest are written, so the folder still serves ONNX Runtime).
    """
    if (source is None) == (model is None):
        raise ValueError("give a model source (path or registry name) or an in-memory model, not both or neither")
    if calibrate is not None and not int8:
        raise ValueError("calibration clips are for the int8 graphs: add --int8 (int8=True)")
    if calibrate is not None and not torch.is_tensor(calibrate):
        from .calibration import user_clips

        user_clips(os.fspath(calibrate))          # a bad folder is refused before minutes of export
    if max_batch < 1 or max_labels < 1:
        raise ValueError(f"max_batch ({max_batch}) and max_labels ({max_labels}) must be at least 1")
    info = {"model": None, "kind": "in-memory", "origin": ""}
    out = os.fspath(out)
    _check_folder(out)                                       # before a long model load
    if model is None:
        loaded = _load_source(source, arch, backbone, random_init)
        model, labels = loaded.model, labels if labels is not None else loaded.labels
        tokenizer = tokenizer or (ClipTokenizer.from_folder(loaded.vocab_dir) if loaded.vocab_dir else None)
        info = {"model": os.fspath(source), "kind": loaded.kind, "origin": loaded.origin}
    model = model.eval()
    config = model.config
    family = family_of(config)
    labels = _class_labels(config, labels)
    tokenizer = (tokenizer or ClipTokenizer()) if family == "xclip" else None    # EVL has no text tower
    _prepare_folder(out)
    fp16 = fp16 or tensorrt                                  # TensorRT builds from the fp16 graphs

    echo(f"exporting {info['model'] or 'the model'} ({family}) to {out} (torch.onnx, opset {OPSET}) ...")
    graphs = export_graphs(model)
    entries = {role: {} for role in graphs}
    for role, g in graphs.items():
        entries[role]["fp32"] = _save(g, os.path.join(out, f"{role}.fp32.onnx"))
        if fp16:
            entries[role]["fp16"] = _save(to_fp16(g), os.path.join(out, f"{role}.fp16.onnx"))
    del graphs
    int8_info, calibration = (_write_int8(out, model, entries, labels, tokenizer, calibrate, calibrate_clips, echo)
                              if int8 else (None, None))
    names = FAMILY_GRAPHS[family]
    data = {"family": family, "config": config.to_dict(), "num_frames": config.num_frames,
            "image_size": config.image_size, "preprocessing": preprocessing(config),
            "precisions": [p for p in ("fp32", "fp16", "int8") if p in entries["video"]], "graphs": entries,
            "inputs": {role: list(i) for role, (i, _) in names.items()},
            "outputs": {role: list(o) for role, (_, o) in names.items()}}
    if family == "evl":
        data.update({"num_classes": config.num_classes,
                     "dynamic_axes": {"pixel_values": ["B"], "logits": ["B"], "video_embeds": ["B"]}})
    else:
        tokenizer.save_vocabulary(out)
        data.update({"context_length": config.context_length,
                     "dynamic_axes": {"input_ids": ["K", "L<=77"], "pixel_values": ["B"], "text_features": ["K"],
                                      "logits": ["B", "K"], "video_embeds": ["B"]},
                     # with their hashes, so a load checks the tokenizer's files as it checks the graphs
                     "vocab": {"vocab": file_entry(out, "vocab.json"), "merges": file_entry(out, "merges.txt")}})
    data.update({"labels": list(labels) if labels else None, "source": info, "versions": _versions(),
                 "int8": int8_info, "tensorrt": None})
    write_manifest(out, data)
    result = ExportResult(out, manifest=data)
    if check:
        _run_checks(result, model, tokenizer, check_labels or labels, echo, check_batch, calibration)
    if tensorrt:
        _build_tensorrt(result, max_batch, max_labels, echo)
    return result


def _write_int8(out: str, model, entries: dict, labels, tokenizer, calibrate, clips, echo) -> tuple[dict, torch.Tensor]:
    """The static int8 video graph, calibrated (calibration.py, quantize.py); returns the manifest's
    record and the calibration pixels.

    The text graph is not quantized: it runs once per label set and is cached, so int8 would save no
    time per video and would only add its error to every label's features. X-CLIP's int8 entry for
    the text role names the fp32 file (same content, same hash).
    """
    import time

    from .calibration import DEFAULT_CLIPS, calibration_pixels, video_feeds
    from .quantize import QUANTIZED_OPS, layers_kept_in_float, quantize_static_int8

    t0 = time.perf_counter()
    if torch.is_tensor(calibrate):
        pixels, source = calibrate.float(), f"{len(calibrate)} clips given as pixel values"
    else:
        count = clips or DEFAULT_CLIPS
        pixels = calibration_pixels(model.config, None if calibrate is None else os.fspath(calibrate), count, echo)
        source = f"{len(pixels)} clips from {calibrate}" if calibrate is not None else f"{len(pixels)} built-in clips"
    feeds = video_feeds(model, pixels, labels, tokenizer)
    src = os.path.join(out, "video.fp32.onnx")
    graph = onnx.load(src)
    keep = layers_kept_in_float(graph)
    total = sum(n.op_type in QUANTIZED_OPS for n in graph.graph.node)
    del graph
    echo(f"quantizing the video graph to int8 ({total - len(keep)} matmuls / convs; {len(keep)} stay float) ...")
    dst = os.path.join(out, "video.int8.onnx")
    info = quantize_static_int8(src, dst, feeds, keep)
    info.update(quantized=total - len(keep), kept_float=len(keep))
    onnx.checker.check_model(dst)
    entries["video"]["int8"] = file_entry(out, os.path.basename(dst))
    if "text" in entries:
        entries["text"]["int8"] = entries["text"]["fp32"]
    info.update(calibration=source, seconds=round(time.perf_counter() - t0, 1))
    return info, pixels


def _run_checks(result: ExportResult, model, tokenizer, labels, echo, batch: int = 2, calibration=None) -> None:
    """Every precision's graphs against the reference (checks.py). The int8 graphs are judged on the
    first `batch` calibration clips instead of the seeded normal pixels: static int8 fixed its scales
    on clips like those, and pixels of another distribution overflow them (the check asks whether
    the graph computes the model on the inputs it was made for; the accuracy on held-out clips is
    what tests/export/test_precision.py and the ladder measure)."""
    manifest = read_manifest(result.folder)
    if tokenizer is not None:      # X-CLIP: a few labels' text; EVL has none
        labels = list(labels)[:16] if labels else load_labels("k400")[:16]
    ids, px = checks.sample_inputs(model.config, tokenizer, labels, batch=batch)
    echo("computing the reference outputs the checks judge by (float64, fp32"
         + (", fp16" if "fp16" in manifest.precisions() else "") + ") ...")
    refs = checks.yardstick(model, ids, px, manifest.precisions())
    result.samples = (refs, ids, px)      # the TensorRT engines are checked on the same inputs
    int8_inputs = (refs, px)
    if calibration is not None and "int8" in manifest.precisions():
        px8 = calibration[:batch].float()
        int8_inputs = ({"fp64": checks.reference_outputs(model, ids, px8, torch.float64)}, px8)
    for precision in manifest.precisions():
        echo(f"checking the {precision} graphs in ONNX Runtime against the reference ...")
        p_refs, p_px = int8_inputs if precision == "int8" else (refs, px)
        result.rows += checks.check_precision(manifest, precision, p_refs, ids, p_px)
    result.rows += checks.check_openvino(manifest, model, refs, ids, px, echo, int8_inputs)   # none without openvino
    result.ok = all(r.ok for r in result.rows if r.precision == "fp32")
    result.table = checks.format_table(result.rows)
    data = dict(result.manifest)
    data["checks"] = [r.to_dict() for r in result.rows]
    write_manifest(result.folder, {k: v for k, v in data.items() if k not in ("format", "format_version")})
    result.manifest = data
    echo(result.table)
    unverified = sorted({r.precision for r in result.rows if not r.ok and r.precision != "fp32"})
    if unverified:
        echo(f"the {', '.join(unverified)} graphs did not pass their check (table above): they stay in the folder "
             "for inspection, and backend 'auto' will not choose them")
    if not result.ok:
        bad = [r.file for r in result.rows if not r.ok and r.precision == "fp32"]
        raise ExportCheckFailed(f"{', '.join(bad)}: ONNX Runtime's fp32 results err from a float64 run of the "
                                f"reference by more than {checks.MULTIPLE:g}x the reference's own fp32 error "
                                "(table above): the graph does not compute the model; please report this with "
                                "the model source")


def _build_tensorrt(result: ExportResult, max_batch: int, max_labels: int, echo) -> None:
    from .trt_runner import build_engine, profiles, require_tensorrt

    trt = require_tensorrt()     # raises TensorRTUnavailable: the ONNX folder above is complete already
    manifest = read_manifest(result.folder)
    trt_info = {"max_batch": max_batch, "max_labels": max_labels, "tensorrt_version": trt.__version__,
                "gpu": torch.cuda.get_device_name()}
    for role, profile in profiles(manifest.config, max_batch, max_labels).items():
        plan = os.path.join(result.folder, f"{role}.fp16.plan")
        echo(f"building the TensorRT {role} engine (B <= {max_batch}, K <= {max_labels}) ...")
        build_engine(manifest.path(role, "fp16"), plan, profile)
        trt_info[role] = file_entry(result.folder, os.path.basename(plan))
    data = {k: v for k, v in result.manifest.items() if k not in ("format", "format_version")}
    data["tensorrt"] = trt_info
    write_manifest(result.folder, data)
    result.manifest = data
    if result.samples is not None:
        from .trt_runner import TrtNet

        refs, ids, px = result.samples
        rows = checks.check_engines(TrtNet(read_manifest(result.folder), "cuda"), trt_info, result.folder, refs, ids,
                                    px)
        result.rows += rows
        result.table = checks.format_table(result.rows)
        echo(checks.format_table(rows))
        data["checks"] = list(data.get("checks") or []) + [r.to_dict() for r in rows]   # auto reads them
        write_manifest(result.folder, data)
        if not all(r.ok for r in rows):
            # refused: an engine that disagrees must not be served; the ONNX folder stays usable
            for role in manifest.roles:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(result.folder, trt_info[role]["file"]))
            data["tensorrt"] = None
            write_manifest(result.folder, data)
            result.manifest = data
            raise ExportCheckFailed("the TensorRT engines disagree with the reference beyond the fp16 bound (table "
                                    "above) and were removed; the ONNX graphs in the folder still serve "
                                    "--backend onnxruntime")


__all__ = ["export_model", "export_graphs", "ExportError", "ExportCheckFailed", "ExportResult"]
