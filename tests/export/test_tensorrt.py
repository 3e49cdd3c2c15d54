"""TensorRT engines from the fp16 graphs: build with profiles for B and K, run on CUDA tensors.

GPU-only: skipped with the reason on machines without a CUDA GPU or without the tensorrt package.
"""

import copy

import pytest
import torch
from helpers import assert_close

import xclip_engine as xe
from xclip_engine.engine.io.labels import load_labels
from xclip_engine.export.onnx_export import export_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trt_folder(tiny_hf, tmp_path_factory):
    pytest.importorskip("tensorrt", reason="needs the tensorrt package (pip install 'xclip-engine[gpu]')")
    out = tmp_path_factory.mktemp("trt") / "onnx"
    export_model(str(tiny_hf), str(out), tensorrt=True, max_batch=4, max_labels=16, echo=lambda m: None)
    return out


def test_engines_in_manifest(trt_folder):
    from xclip_engine.export.manifest import read_manifest

    m = read_manifest(trt_folder)
    assert m.tensorrt["max_batch"] == 4 and m.tensorrt["max_labels"] == 16
    assert (trt_folder / m.tensorrt["video"]["file"]).is_file()


def test_tensorrt_matches_reference_within_fp16_tolerance(trt_folder, reference):
    model = xe.load(str(trt_folder), backend="tensorrt", device="cuda")
    labels = load_labels("k400")[:20]                          # more than the profile's 16: split
    g = torch.Generator().manual_seed(2)
    px = torch.randn(6, 4, 3, 32, 32, generator=g)              # more than the profile's 4: split
    ids = reference.tokenizer(labels)
    with torch.inference_mode():
        text32 = reference.net.encode_text(ids)
        logits32 = reference.net(px, text32)
        half = copy.deepcopy(reference.net).to("cuda").half()   # a copy: the shared reference stays fp32
        logits16 = half(px.cuda().half(), half.encode_text(ids.cuda())).float().cpu()
    logits = model.logits(px, labels).cpu()
    torch_err = float((logits16.double() - logits32.double()).abs().max())
    assert_close(logits, logits32, rtol=0.0, atol=2 * torch_err + 1e-3, name="TensorRT logits")
    assert torch.equal(logits.argmax(-1), logits32.argmax(-1))
    assert model.encode_video(px).shape == (6, 64)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tensorrt_on_a_second_gpu(trt_folder):
    # TensorRT binds an engine to the device current at deserialization and runs it on that device:
    # the runner must load and run a cuda:1 model under cuda:1 while torch keeps device 0 current
    if torch.cuda.get_device_name(0) != torch.cuda.get_device_name(1):
        pytest.skip("needs two CUDA GPUs of one model (TensorRT engines are specific to the GPU model)")
    labels = load_labels("k400")[:5]
    px = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    on0 = xe.load(str(trt_folder), backend="tensorrt", device="cuda:0").logits(px, labels)
    model = xe.load(str(trt_folder), backend="tensorrt", device="cuda:1")
    on1 = model.logits(px, labels)
    assert on1.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    assert_close(on1.cpu(), on0.cpu(), rtol=0.0, atol=1e-3, name="TensorRT logits, cuda:1 vs cuda:0")
