"""kernels/quick_gelu.py (bias + QuickGELU, and the MLP built on it) against ReferenceOps.mlp."""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.layers import MLP
from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import quick_gelu as qg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")

# hidden [M, 4D]: B/32 tokens x 3072, L/14 width 4096, the tiny 256, and sizes no block divides
SHAPES = [(2, 50, 3072), (3, 4096), (3, 17, 256), (5, 1000), (1, 1)]


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (3.0 * torch.randn(shape, generator=g)).to(device, dtype)   # covers both tails of the sigmoid
    bias = torch.randn(shape[-1], generator=g).to(device, dtype)
    return h, bias


@torch.no_grad()
def test_reference_function_is_the_model_op(kdevice):
    mlp = MLP(16, 64).to(kdevice)
    x = torch.randn(5, 16, device=kdevice)
    got = mlp.fc2(qg.bias_quick_gelu_ref(torch.nn.functional.linear(x, mlp.fc1.weight), mlp.fc1.bias))
    assert_close(got, REFERENCE.mlp(x, mlp.fc1, mlp.fc2), rtol=1e-6, name="ref vs op")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fp32_matches_reference(shape, kdevice):
    h, bias = make_inputs(shape, torch.float32, kdevice)
    assert qg.why_not(h, bias) is None
    out = qg.bias_quick_gelu_op(h, bias)
    assert_close(out, qg.bias_quick_gelu_ref(h, bias), rtol=1e-5, name=f"bias_quick_gelu {shape}")


@pytest.mark.parametrize("shape", [(2, 50, 3072), (5, 1000)], ids=str)
def test_fp16_within_twice_torch_error(shape, kdevice, fp16_rule):
    h, bias = make_inputs(shape, torch.float16, kdevice)
    fp16_rule(f"bias_quick_gelu fp16 {shape}", qg.bias_quick_gelu_op(h, bias),
              qg.bias_quick_gelu_ref(h, bias, upcast=True), qg.bias_quick_gelu_ref(h, bias))


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_mlp_matches_reference(dtype, kdevice, fp16_rule):
    torch.manual_seed(0)
    mlp = MLP(64, 256).to(kdevice)
    for p in mlp.parameters():
        p.normal_(0.0, 0.3)
    x = torch.randn(3, 17, 64, device=kdevice)
    expected32 = REFERENCE.mlp(x, mlp.fc1, mlp.fc2)
    if dtype == torch.float32:
        assert_close(qg.mlp(x, mlp.fc1, mlp.fc2), expected32, rtol=1e-4, name="mlp fp32")
        return
    mlp16, x16 = MLP(64, 256).to(kdevice, dtype), x.to(dtype)
    mlp16.load_state_dict(mlp.state_dict())
    mlp32 = MLP(64, 256).to(kdevice)
    mlp32.load_state_dict(mlp16.state_dict())          # the yardstick: fp16 weights, fp32 arithmetic
    fp16_rule("mlp fp16", qg.mlp(x16, mlp16.fc1, mlp16.fc2), REFERENCE.mlp(x16.float(), mlp32.fc1, mlp32.fc2),
              REFERENCE.mlp(x16, mlp16.fc1, mlp16.fc2))


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    h, bias = make_inputs((4, 64), torch.float32, kdevice)
    assert "without bias" in qg.why_not(h, None)
    assert "not contiguous" in qg.why_not(h.t(), bias[:4])
    assert "need [..., N]" in qg.why_not(h, bias[:3])
    mlp = MLP(8, 32).to(kdevice)
    x = torch.randn(2, 8, device=kdevice)

    def boom(*a):
        raise AssertionError("the kernel ran where the reference should")

    monkeypatch.setattr(qg, "bias_quick_gelu_op", boom)
    # with autograd on (training) the reference runs and gradients flow
    qg.mlp(x, mlp.fc1, mlp.fc2).sum().backward()
    assert mlp.fc1.weight.grad is not None
    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    with torch.no_grad():
        assert_close(qg.mlp(x, mlp.fc1, mlp.fc2), REFERENCE.mlp(x, mlp.fc1, mlp.fc2), rtol=1e-6, name="disabled")


def test_fake_implementation_matches_the_kernel(kdevice):
    torch.library.opcheck(qg.bias_quick_gelu_op, make_inputs((3, 40), torch.float32, kdevice),
                          test_utils=("test_schema", "test_faketensor"))


@needs_cuda
def test_bf16_on_gpu(fp16_rule):
    h, bias = make_inputs((16, 50, 3072), torch.bfloat16, "cuda")
    fp16_rule("bias_quick_gelu bf16", qg.bias_quick_gelu_op(h, bias),
              qg.bias_quick_gelu_ref(h, bias, upcast=True), qg.bias_quick_gelu_ref(h, bias), atol=1e-2)
