"""kernels/quick_gelu.py (bias + QuickGELU, and the MLP built on it) against ReferenceOps.mlp.

The activation kernel is no op of the ops contract (the MLP is), so it is tested through the MLP
it serves: fc1's GEMM without its bias, the kernel adding the bias and applying x*sigmoid(1.702x),
fc2's GEMM, against the one reference, ReferenceOps.mlp.
"""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import quick_gelu as qg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")

# (x shape [..., D], hidden 4D): B/32 tokens into 3072, L/14's 4096, the tiny model's 64 -> 256,
# and hidden widths no block divides
SHAPES = [((2, 50, 768), 3072), ((3, 1024), 4096), ((3, 17, 64), 256), ((5, 250), 1000), ((1, 1), 1)]


def make_inputs(shape, hidden, dtype, device, seed=0):
    """(x, w1, b1, w2, b2) as the model passes them; fc1's outputs have std ~3, both sigmoid tails."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    r = lambda *s, std=1.0: (std * torch.randn(*s, generator=g)).to(device, dtype)
    return r(*shape), r(hidden, d, std=3.0 * d**-0.5), r(hidden), r(d, hidden, std=hidden**-0.5), r(d, std=0.2)


def _label(s):
    return "x{}-hidden{}".format(*s) if isinstance(s, tuple) and isinstance(s[0], tuple) else str(s)


@pytest.mark.parametrize("shape", SHAPES, ids=_label)
def test_fp32_matches_reference(shape, kdevice):
    args = make_inputs(*shape, torch.float32, kdevice)
    x, w1, b1 = args[:3]
    assert qg.why_not(torch.nn.functional.linear(x, w1), b1) is None
    assert_close(qg.mlp(*args), REFERENCE.mlp(*args), rtol=1e-4, name=f"mlp fp32 {shape}")


@pytest.mark.parametrize("shape", [((2, 50, 768), 3072), ((5, 250), 1000)], ids=_label)
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    args = make_inputs(*shape, torch.float16, kdevice)
    out = qg.mlp(*args)
    assert out.dtype == torch.float16
    reference_rule(f"mlp fp16 {shape}", out, REFERENCE.mlp, *args)


def test_the_kernel_runs_inside_the_mlp(kdevice, monkeypatch):
    # the fp32/fp16 tests above test the kernel only if the fused path ran, not the reference
    launches = []
    real = qg.bias_quick_gelu_op
    monkeypatch.setattr(qg, "bias_quick_gelu_op", lambda h, b: launches.append(h.shape) or real(h, b))
    qg.mlp(*make_inputs((3, 17, 64), 256, torch.float32, kdevice))
    assert launches == [(3, 17, 256)]


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    h, bias = torch.randn(4, 64, device=kdevice), torch.randn(64, device=kdevice)
    assert "without bias" in qg.why_not(h, None)
    assert "not contiguous" in qg.why_not(h.t(), bias[:4])
    assert "need [..., N]" in qg.why_not(h, bias[:3])
    x, w1, b1, w2, b2 = make_inputs((2, 8), 32, torch.float32, kdevice)
    w1.requires_grad_(True)

    def boom(*a):
        raise AssertionError("the kernel ran where the reference should")

    monkeypatch.setattr(qg, "bias_quick_gelu_op", boom)
    # with autograd on (training) the reference runs and gradients flow
    qg.mlp(x, w1, b1, w2, b2).sum().backward()
    assert w1.grad is not None
    with torch.no_grad():
        assert_close(qg.mlp(x, w1, None, w2, b2), REFERENCE.mlp(x, w1, None, w2, b2), rtol=1e-6, name="no fc1 bias")
    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    with torch.no_grad():
        assert_close(qg.mlp(x, w1, b1, w2, b2), REFERENCE.mlp(x, w1, b1, w2, b2), rtol=1e-6, name="disabled")


def test_fake_implementation_matches_the_kernel(kdevice):
    g = torch.Generator().manual_seed(0)
    h, bias = torch.randn(3, 40, generator=g).to(kdevice), torch.randn(40, generator=g).to(kdevice)
    torch.library.opcheck(qg.bias_quick_gelu_op, (h, bias), test_utils=("test_schema", "test_faketensor"))


@needs_cuda
def test_bf16_on_gpu(reference_rule):
    args = make_inputs((16, 50, 768), 3072, torch.bfloat16, "cuda")
    reference_rule("mlp bf16", qg.mlp(*args), REFERENCE.mlp, *args)
