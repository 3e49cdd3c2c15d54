"""ONNX Runtime fp32 backend against the reference, judged by the yardstick (engine/runtime/yardstick.py):
error against a float64 run of the reference within 3x the reference's own fp32 error, plus top-1.

Two models, each exported once per module: the tiny test architecture and full X-CLIP B/32
(8 frames, 224 px), both transformers random init saved with save_pretrained (weights scaled so
every branch counts, tests/xclip_factory.py) and read by xe.load. The export runs its own check
(export_model raises when the fp32 graphs fail it): the full-size B/32 export must pass it on any
CPU. The B/32 export takes about a minute.
"""

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
    result = export_model(str(src), str(out), echo=lambda m: None)   # raises if its own check fails
    assert result.ok and {r.file for r in result.rows} == {"text.fp32.onnx", "video.fp32.onnx"}
    print(f"\n{request.param} export check:\n{result.table}")
    runtime = xe.load(str(out), backend="onnxruntime", device="cpu")
    c = reference.config
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
