"""kernels/layer_norm.py (plain and with the fused residual add) against ReferenceOps."""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import layer_norm as ln

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")

# (rows..., D): model widths 512/768/1024 at the token counts 50/197/257, the tiny width 64, odd sizes
SHAPES = [(2, 50, 768), (197, 512), (257, 1024), (3, 17, 64), (7, 1000), (1, 1)]


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    # a per-channel offset as residual streams have, so the mean is far from zero
    x = (3.0 * torch.randn(d, generator=g) + torch.randn(shape, generator=g)).to(device, dtype)
    delta = torch.randn(shape, generator=g).to(device, dtype)
    w = (1.0 + 0.2 * torch.randn(d, generator=g)).to(device, dtype)
    b = (0.2 * torch.randn(d, generator=g)).to(device, dtype)
    return x, delta, w, b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fp32_matches_reference(shape, kdevice):
    x, delta, w, b = make_inputs(shape, torch.float32, kdevice)
    assert ln.why_not(x, w, b) is None
    assert_close(ln.layer_norm(x, w, b, 1e-5), REFERENCE.layer_norm(x, w, b, 1e-5), rtol=1e-4, name=f"ln {shape}")
    s, y = ln.add_layer_norm(x, delta, w, b, 1e-5)
    s_ref, y_ref = REFERENCE.add_layer_norm(x, delta, w, b, 1e-5)
    assert torch.equal(s, s_ref)                   # one fp32 add: bit-identical
    assert_close(y, y_ref, rtol=1e-4, name=f"add_ln {shape}")


@pytest.mark.parametrize("shape", [(2, 50, 768), (257, 1024), (7, 1000)], ids=str)
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    x, delta, w, b = make_inputs(shape, torch.float16, kdevice)
    reference_rule(f"ln fp16 {shape}", ln.layer_norm(x, w, b, 1e-5), REFERENCE.layer_norm, x, w, b, 1e-5)
    s, y = ln.add_layer_norm(x, delta, w, b, 1e-5)
    assert torch.equal(s, x + delta)               # the sum is rounded to fp16 once, as the reference's is
    reference_rule(f"add_ln fp16 {shape}", (s, y), REFERENCE.add_layer_norm, x, delta, w, b, 1e-5)


def test_strided_rows(kdevice):
    # ln_post reads the class token of every frame: rows L*D apart
    x, _, w, b = make_inputs((4, 50, 64), torch.float32, kdevice)
    cls = x[:, 0]
    assert ln.why_not(cls, w, b) is None
    assert_close(ln.layer_norm(cls, w, b, 1e-5), REFERENCE.layer_norm(cls, w, b, 1e-5), rtol=1e-4, name="x[:, 0]")


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    x, delta, w, b = make_inputs((3, 64), torch.float32, kdevice)
    assert "without weight" in ln.why_not(x, None, b)
    assert "residual shape" in ln.why_not(x, w, b, delta[:1])
    assert "float64" in ln.why_not(x.double(), w.double(), b.double())
    assert "D <= 16384" in ln.why_not(torch.zeros(1, 32768, device=kdevice), torch.ones(32768, device=kdevice),
                                      torch.zeros(32768, device=kdevice))

    def boom(*a):
        raise AssertionError("the kernel ran although XCLIP_DISABLE_TRITON=1")

    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setattr(ln, "layer_norm_op", boom)
    monkeypatch.setattr(ln, "add_layer_norm_op", boom)
    assert_close(ln.layer_norm(x, w, b, 1e-5), REFERENCE.layer_norm(x, w, b, 1e-5), rtol=1e-6, name="disabled")
    assert_close(ln.add_layer_norm(x, delta, w, b, 1e-5)[1], REFERENCE.add_layer_norm(x, delta, w, b, 1e-5)[1],
                 rtol=1e-6, name="disabled add")


def test_fake_implementations_match_the_kernel(kdevice):
    x, delta, w, b = make_inputs((2, 5, 32), torch.float32, kdevice)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ln.layer_norm_op, (x, w, b, 1e-5), test_utils=utils)
    torch.library.opcheck(ln.add_layer_norm_op, (x, delta, w, b, 1e-5), test_utils=utils)


@needs_cuda
@pytest.mark.parametrize("shape", [(16, 50, 768), (8, 257, 1024)], ids=str)
def test_bf16_on_gpu(shape, reference_rule):
    x, delta, w, b = make_inputs(shape, torch.bfloat16, "cuda")
    s, y = ln.add_layer_norm(x, delta, w, b, 1e-5)
    assert torch.equal(s, x + delta)
    # the norm of the bf16 sum s, as the kernel computes it: the exact answer normalises s itself
    reference_rule(f"add_ln bf16 {shape}", y, REFERENCE.layer_norm, s, w, b, 1e-5)
