"""The rungs of benchmarks/ladder.py: what each one loads and times, run one per fresh process.

    python benchmarks/ladder.py --rung NAME --work DIR --batch B ...   (ladder.py starts these)

A rung returns its timings (seconds per call of `batch` videos, warm-up excluded), the peak RSS of
its process and the logits it computed (saved beside the work folder's inputs, so the parent can
compare every rung with our fp32 reference on the same videos), or the reason it cannot run here.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from bench_export import _peak_rss_mib

from xclip_engine.engine.runtime.device import default_device

# name -> what it is, as the table prints it
RUNGS = {
    "hf_fp32": "transformers XCLIPModel forward, eager fp32 (text encoder in every call): the baseline",
    "hf_bf16_autocast": "transformers XCLIPModel forward under torch.autocast(bf16)",
    "hf_video_onnx": "plain torch.onnx.export of transformers' video tower, ONNX Runtime (video embedding only)",
    "ours_fp32": "ours, reference backend fp32, text features cached",
    "ours_fp32_video": "ours, reference fp32 video tower alone (encode_video, no labels)",
    "ours_onednn_fp32": "ours, backend onednn: the reference with its fp32 projections on oneDNN's GEMM",
    "ours_fp32_compile": "ours, reference fp32 under torch.compile",
    "ours_autocast_bf16": "ours, fp32 weights under torch.autocast(bf16)",
    "ours_bf16": "ours, reference backend bf16 (engine/runtime/bf16.py)",
    "ours_bf16_compile": "ours, bf16 under torch.compile",
    "ort_fp32": "ours, exported graphs in ONNX Runtime fp32",
    "ort_int8": "ours, static int8 graph (export --int8) in ONNX Runtime",
    "openvino_fp32": "peer: OpenVINO on our exported fp32 graphs, f32",
    "openvino_bf16": "peer: OpenVINO on our exported fp32 graphs, bf16 inference precision",
    "openvino_nncf_int8": "peer: OpenVINO int8 by NNCF's own quantization (transformer preset) of our fp32 graph, "
                          "same calibration clips",
    "ours_openvino_bf16": "ours, backend openvino bf16 (export folder)",
    "ours_openvino_int8": "ours, static int8 graph (export --int8) on backend openvino",
    "ours_auto": "ours, backend auto on the checkpoint (the path it measured fastest and verified; calibration "
                 "not timed)",
    "export_auto": "ours, backend auto on the export folder made with --int8 (the deploy path)",
    "triton": "ours, triton backend (fused kernels), GPU",
    "tensorrt_fp16": "ours, TensorRT fp16 engine, GPU",
}
BF16_RUNGS = {"hf_bf16_autocast", "ours_autocast_bf16", "ours_bf16", "ours_bf16_compile", "openvino_bf16",
              "ours_openvino_bf16"}
OPENVINO_PEERS = ("openvino_fp32", "openvino_bf16", "openvino_nncf_int8")
COMPILE_RUNGS = {"ours_fp32_compile", "ours_bf16_compile"}
# need ladder.prepare's exports
ONNX_RUNGS = {"hf_video_onnx", "ort_fp32", "ort_int8", "tensorrt_fp16", "export_auto", "ours_openvino_bf16",
              "ours_openvino_int8", *OPENVINO_PEERS}
NNCF_FILE = "openvino_nncf_int8.xml"


class Skip(Exception):
    """A rung that cannot run on this machine; the message is the reason the table shows."""


def inputs(work: str, batch: int) -> torch.Tensor:
    """The videos every rung sees at this batch size (written once by ladder.prepare)."""
    return torch.from_numpy(np.load(os.path.join(work, f"pixels_b{batch}.npy")))


def labels(work: str) -> list[str]:
    with open(os.path.join(work, "labels.json")) as f:
        return json.load(f)


def _device() -> torch.device:
    return default_device()


def _synced(fn):
    """On a GPU a call returns before the work ends: wait for it, or the timing measures nothing."""
    if _device().type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def _hf(work: str):
    from transformers import XCLIPModel

    return XCLIPModel.from_pretrained(os.path.join(work, "hf")).eval()


def _token_ids(work: str, names):
    from xclip_engine.engine.model.layers import causal_eot_trim
    from xclip_engine.engine.tokenizer import ClipTokenizer

    ids = ClipTokenizer()(names)
    return ids[:, : causal_eot_trim(ids)]   # as padding=True: as long as the longest label


def _ours(work: str, precision=None, backend="reference", device="cpu"):
    import xclip_engine as xe
    from xclip_engine.engine.runtime.cpu_memory import keep_freed_memory

    keep_freed_memory()   # as the CLI runs our models (xe.load leaves malloc alone)
    return xe.load(os.path.join(work, "hf"), backend=backend, device=device, precision=precision)


def build(rung: str, work: str, px: torch.Tensor):
    """(fn that runs one timed call and returns [B, K] logits or None, extra facts for the record)."""
    names, extra = labels(work), {}
    if rung in ("triton", "tensorrt_fp16") and not torch.cuda.is_available():
        raise Skip("needs a CUDA GPU (this machine has none)")
    if rung.startswith("hf_"):
        hf = _hf(work)
        if rung == "hf_video_onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(os.path.join(work, "hf_video.onnx"), providers=["CPUExecutionProvider"])
            feeds = {sess.get_inputs()[0].name: px.numpy()}

            def video_only():
                sess.run(None, feeds)      # a video embedding, no logits: nothing to compare
            return video_only, extra
        ids = _token_ids(work, names)
        if rung == "hf_fp32":
            return (lambda: hf(input_ids=ids, pixel_values=px).logits_per_video), extra

        def autocast_call():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return hf(input_ids=ids, pixel_values=px).logits_per_video.float()
        return autocast_call, extra
    if rung in OPENVINO_PEERS:
        return _openvino_peer(rung, work, px, names), extra
    if rung in ("ort_fp32", "ort_int8", "tensorrt_fp16", "ours_openvino_bf16", "ours_openvino_int8"):
        from xclip_engine.export.runtime import load_runtime

        if rung == "tensorrt_fp16":
            if not _has_plan(work):
                raise Skip("no TensorRT plan was built (needs the tensorrt package and a GPU at prepare time)")
            m = load_runtime(os.path.join(work, "onnx"), "tensorrt", "cuda")
        elif rung.startswith("ours_openvino"):
            _need_openvino()
            m = load_runtime(os.path.join(work, "onnx"), "openvino", "cpu", precision=rung.rsplit("_", 1)[1])
        else:
            m = load_runtime(os.path.join(work, "onnx"), "onnxruntime", "cpu", precision=rung.split("_")[1])
    elif rung == "triton":
        try:
            m = _ours(work, backend="triton", device="cuda")
        except NotImplementedError as e:
            raise Skip(str(e)) from None
    elif rung in ("ours_auto", "export_auto"):
        # the verdict is kept in the work folder: a first run calibrates (timed apart), later ones read it
        os.environ.setdefault("XCLIP_ENGINE_CACHE", os.path.join(work, "auto_cache"))
        t0 = time.perf_counter()
        if rung == "ours_auto":
            m = _ours(work, backend="auto", device=str(_device()))
        else:
            import xclip_engine as xe

            m = xe.load(os.path.join(work, "onnx"), backend="auto", device=str(_device()))
        extra.update(load_seconds=time.perf_counter() - t0, auto_choice=f"{m.choice.backend} {m.choice.precision}",
                     calibration_seconds=m.choice.calibration_s, auto_cached=m.choice.cached)
    elif rung == "ours_onednn_fp32":
        m = _ours(work, backend="onednn")
    else:
        m = _ours(work, precision="bf16" if rung.startswith("ours_bf16") else None)
    t0 = time.perf_counter()
    text = m.encode_text(names)            # once per label set, then cached (as Model.classify does)
    extra["text_seconds_once"] = time.perf_counter() - t0
    if rung in COMPILE_RUNGS:
        m.net = torch.compile(m.net)
        t0 = time.perf_counter()
        m.logits(px, text)                 # compiles for this shape: reported, not timed
        extra["compile_seconds"] = time.perf_counter() - t0
    if rung == "ours_fp32_video":
        def video_only_ours():
            m.encode_video(px)     # a video embedding, no logits: nothing to compare
        return video_only_ours, extra
    if rung == "ours_autocast_bf16":
        def autocast_ours():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m.logits(px, text).float()
        return autocast_ours, extra
    return (lambda: m.logits(px, text)), extra


def _need_openvino():
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise Skip("openvino is not installed (pip install 'xclip-engine[openvino]')")


def openvino_hint(core, want: str) -> str:
    """OpenVINO's inference precision for `want`: bf16 only where its CPU plugin runs bf16."""
    return "bf16" if want == "bf16" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def _openvino_peer(rung: str, work: str, px: torch.Tensor, names):
    """What an OpenVINO user gets from our exported graphs with OpenVINO's own API and tools: the
    graphs read and compiled as they are (f32 or bf16 inference precision), or the video graph
    quantized by NNCF (ladder.prepare_nncf). Text features once, from the fp32 text graph."""
    _need_openvino()
    import openvino as ov

    core = ov.Core()
    folder = os.path.join(work, "onnx")
    video = os.path.join(folder, "video.fp32.onnx")
    hint = openvino_hint(core, "bf16" if rung != "openvino_fp32" else "fp32")
    if rung == "openvino_nncf_int8":
        video = os.path.join(work, NNCF_FILE)
        if not os.path.isfile(video):
            raise Skip("no NNCF int8 model: nncf was not installed when the ladder prepared its models "
                       "(pip install nncf, then run again with a fresh --work)")
    cfg = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    text_net = core.compile_model(core.read_model(os.path.join(folder, "text.fp32.onnx")), "CPU", cfg)
    ids = _token_ids(work, names).numpy()
    text = text_net.create_infer_request().infer({"input_ids": ids})[text_net.output(0)].copy()
    net = core.compile_model(core.read_model(video), "CPU", cfg)
    request, pixels = net.create_infer_request(), px.numpy()

    def call():
        out = request.infer({"pixel_values": pixels, "text_features": text})
        return torch.from_numpy(out[net.output(0)].copy())
    return call


def _has_plan(work: str) -> bool:
    try:
        with open(os.path.join(work, "onnx", "manifest.json")) as f:
            return bool(json.load(f).get("tensorrt"))
    except OSError:
        return False


def count_flops(work: str, batch: int) -> dict:
    """GFLOP per video, counted by torch.utils.flop_counter on our fp32 reference (and transformers').

    The counter has no formula for the CPU flash-attention kernel, so SDPA runs its math backend
    (plain matmuls, which it counts) while counting; the arithmetic is the same.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    px, names = inputs(work, batch), labels(work)
    m = _ours(work)
    text = m.encode_text(names)
    out = {}
    with sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            m.net.encode_video(px)
        out["video_tower_gflop_per_video"] = fc.get_total_flops() / batch / 1e9
        with FlopCounterMode(display=False) as fc:
            m.logits(px, text)
        out["ours_gflop_per_video"] = fc.get_total_flops() / batch / 1e9
        hf, ids = _hf(work), _token_ids(work, names)
        with FlopCounterMode(display=False) as fc:
            hf(input_ids=ids, pixel_values=px)
        out["hf_forward_gflop_per_video"] = fc.get_total_flops() / batch / 1e9
    return out


def run_rung(rung: str, work: str, batch: int, repeats: int) -> dict:
    """One rung, in this process: the record ladder.py reads (printed as one JSON line)."""
    rec = {"rung": rung, "batch": batch}
    if rung == "flops":
        return {**rec, **count_flops(work, batch)}
    px = inputs(work, batch)
    try:
        with torch.inference_mode():
            fn, extra = build(rung, work, px)
            fn = _synced(fn)
            logits = fn()                                  # the warm-up call, also the answers compared
            seconds = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                seconds.append(time.perf_counter() - t0)
    except Skip as e:
        return {**rec, "skipped": str(e)}
    if logits is not None:
        path = os.path.join(work, "logits", f"{rung}_b{batch}.npy")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, logits.float().cpu().numpy())
        rec["logits_file"] = path
    return {**rec, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "load_avg": os.getloadavg()[0], **extra}
