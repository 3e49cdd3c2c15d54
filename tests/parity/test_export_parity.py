"""ONNX Runtime fp32 backend against the reference, judged by the yardstick (engine/runtime/yardstick.py):
error against a float64 run of the reference within 3x the reference's own fp32 error, plus top-1.

Two models, each exported once per module: the tiny test architecture and full X-CLIP B/32
(8 frames, 224 px), both transformers random init saved with save_pretrained (weights scaled so
every branch counts, tests/xclip_factory.py) and read by xe.load. The export runs its own check
(export_model raises when the fp32 graphs fail it): the full-size B/32 export must pass it on any
CPU. The B/32 export takes about a minute. Each export also writes the static int8 video graph,
calibrated on 4 seeded videos of the test inputs' distribution (as a user calibrates on clips like
theirs), judged by top-1 agreement with fp32 on 64 other seeded videos x 400 labels.
"""

import importlib.util

import pytest
import torch
from xclip_factory import B32_HF, TINY_HF, hf_model

import xclip_engine as xe
from xclip_engine.engine.io.labels import load_labels
from xclip_engine.engine.runtime.yardstick import float64_copy, judge
from xclip_engine.export.onnx_export import export_model

CASES = {"tiny": (TINY_HF, 3), "b32": (B32_HF, 2)}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    kwargs, batch = CASES[request.param]
    src = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf_model(kwargs).save_pretrained(src)
    reference = xe.load(str(src), device="cpu")
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "export"
    c = reference.config
    g = torch.Generator().manual_seed(2)
    calibration = torch.randn(4, c.num_frames, 3, c.image_size, c.image_size, generator=g)
    result = export_model(str(src), str(out), int8=True, calibrate=calibration,
                          echo=lambda m: None)   # raises if its own fp32 check fails
    assert result.ok and {r.file for r in result.rows if r.precision == "fp32"} == {"text.fp32.onnx",
                                                                                    "video.fp32.onnx"}
    print(f"\n{request.param} export check:\n{result.table}")
    runtime = xe.load(str(out), backend="onnxruntime", device="cpu")
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=g)
    return reference, runtime, pixels


def test_ort_fp32_matches_reference(pair):
    reference, runtime, pixels = pair
    labels = load_labels("k400")[:12]
    exact = float64_copy(reference.net)
    ids = reference.tokenizer(labels, context_length=reference.config.context_length)
    with torch.inference_mode():
        text64 = exact.encode_text(ids)
        logits64 = exact(pixels.double(), text64)
        video64 = exact.encode_video(pixels.double())
    text, ref_text = runtime.encode_text(labels), reference.encode_text(labels)
    logits, ref_logits = runtime.logits(pixels, text), reference.logits(pixels, ref_text)
    verdicts = [judge("text features", text, text64, ref_text),
                judge("logits", logits, logits64, ref_logits, classes=True),
                judge("video embeddings", runtime.encode_video(pixels), video64, reference.encode_video(pixels))]
    for v in verdicts:
        print(v.row())
    assert all(v.ok for v in verdicts), "\n".join(v.row() for v in verdicts)
    # the served graphs are the fused ones, checked against the plain graphs when they were made
    info = runtime.net.describe()
    assert info["video"]["fusion"] == "on" and info["video"]["fused"].get("QuickGelu", 0) > 0


INT8_RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (the [openvino] extra)"))]


@pytest.mark.parametrize("backend", INT8_RUNTIMES)
def test_static_int8_top1_agrees_with_fp32(pair, backend):
    reference, runtime, _ = pair
    c = reference.config
    pixels = torch.randn(64, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(3))
    text = runtime.encode_text(load_labels("k400"))
    int8 = xe.load(runtime.origin, backend=backend, precision="int8", device="cpu")
    with torch.inference_mode():
        a = torch.cat([runtime.logits(pixels[i:i + 8], text) for i in range(0, 64, 8)])
        b = torch.cat([int8.logits(pixels[i:i + 8], text) for i in range(0, 64, 8)])
    agree = int((a.argmax(-1) == b.argmax(-1)).sum())
    err = float((a - b).abs().max() / (a.max() - a.min()))
    print(f"int8 on {backend}: top-1 agrees with fp32 on {agree}/64, max logit error {100 * err:.2f}% of the range")
    assert agree >= 0.99 * 64, f"int8 ({backend}) agrees with fp32 on {agree}/64 seeded videos"
    assert err > 0                 # really quantized, not the fp32 graph again
