"""ONNX Runtime fp32 backend against the reference: 1e-4 relative on logits (DESIGN.md section 6).

Two models, each exported once per module: the tiny test architecture and full X-CLIP B/32
(8 frames, 224 px), both transformers random init saved with save_pretrained (weights scaled so
every branch counts, tests/xclip_factory.py) and read by xe.load. The B/32 export takes minutes.
"""

import pytest
import torch
from helpers import assert_close
from xclip_factory import B32_HF, TINY_HF, hf_model

import xclip_engine as xe
from xclip_engine.engine.labels import load_labels
from xclip_engine.export.onnx_export import export_model

CASES = {"tiny": (TINY_HF, 3), "b32": (B32_HF, 2)}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    kwargs, batch = CASES[request.param]
    src = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf_model(kwargs).save_pretrained(src)
    reference = xe.load(str(src), device="cpu")
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "export"
    export_model(str(src), str(out), check=False, echo=lambda m: None)   # the test is the check
    runtime = xe.load(str(out), backend="onnxruntime", device="cpu")
    c = reference.config
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=g)
    return reference, runtime, pixels


def test_ort_fp32_matches_reference(pair):
    reference, runtime, pixels = pair
    labels = load_labels("k400")[:12]
    text, ref_text = runtime.encode_text(labels), reference.encode_text(labels)
    err_text = assert_close(text, ref_text, rtol=1e-4, name="text features")
    logits, ref_logits = runtime.logits(pixels, text), reference.logits(pixels, ref_text)
    err_logits = assert_close(logits, ref_logits, rtol=1e-4, name="logits")
    err_video = assert_close(runtime.encode_video(pixels), reference.encode_video(pixels), rtol=1e-4,
                             name="video embeddings")
    assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
    # the served graphs are the fused ones, checked against the plain graphs when they were made
    info = runtime.net.describe()
    assert info["video"]["fusion"] == "on" and info["video"]["fused"].get("QuickGelu", 0) > 0
    print(f"relative max error: text {err_text:.2e}, logits {err_logits:.2e}, video {err_video:.2e}")
