"""kernels/prompt_attention.py against the reference op (ReferenceOps.prompt_attention)."""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import prompt_attention as pa

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")

# (B, H, K labels, N visual tokens, dh): K 1/3/400, N 49 (B/32), 196 (B/16), 256 (L/14), heads 8/12/16
SHAPES = [(2, 1, 1, 49, 64), (1, 2, 3, 196, 64), (1, 1, 400, 49, 64), (1, 1, 400, 256, 64),
          (1, 8, 3, 49, 64), (1, 12, 1, 50, 64), (1, 16, 3, 49, 64), (3, 2, 5, 16, 32)]


def make_inputs(b, h, kq, n, dh, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    heads = lambda x: x.view(x.shape[0], x.shape[1], h, dh).transpose(1, 2)    # [B, H, *, dh] view
    q = heads(torch.randn(b, kq, h * dh, generator=g).to(device, dtype))
    k, v = (heads(t) for t in torch.randn(b, n, 2 * h * dh, generator=g).to(device, dtype).chunk(2, dim=-1))
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-h{}-K{}-N{}-dh{}".format(*s))
def test_fp32_matches_reference(shape, kdevice):
    args = make_inputs(*shape, torch.float32, kdevice)
    assert pa.why_not(*args) is None
    out = pa.prompt_attention(*args)
    assert out.transpose(1, 2).is_contiguous()        # laid out for a free head merge
    assert_close(out, REFERENCE.prompt_attention(*args), rtol=1e-4, name=f"prompt_attention fp32 {shape}")


@pytest.mark.parametrize("shape", [(1, 1, 400, 196, 64), (2, 12, 3, 49, 64)],
                         ids=lambda s: "b{}-h{}-K{}-N{}-dh{}".format(*s))
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    args = make_inputs(*shape, torch.float16, kdevice)
    out = pa.prompt_attention(*args)
    assert out.dtype == torch.float16
    reference_rule(f"prompt_attention fp16 {shape}", out, REFERENCE.prompt_attention, *args)


def test_shared_label_queries_are_read_without_a_copy(kdevice):
    # the first prompt layer's queries are one label set expanded over the videos (batch stride 0)
    q, k, v = make_inputs(3, 2, 5, 49, 32, torch.float32, kdevice)
    q = q[:1].expand(3, -1, -1, -1)
    assert q.stride(0) == 0
    assert_close(pa.prompt_attention(q, k, v), REFERENCE.prompt_attention(q.contiguous(), k, v), rtol=1e-4,
                 name="expanded queries")


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    q, k, v = make_inputs(1, 2, 3, 16, 32, torch.float32, kdevice)
    assert "need [B, H, K, dh]" in pa.why_not(q, k[:, :1], v)
    assert "N=0" in pa.why_not(q, k[:, :, :0], v[:, :, :0])
    assert "float64" in pa.why_not(q.double(), k.double(), v.double())

    def boom(*a):
        raise AssertionError("the kernel ran although XCLIP_DISABLE_TRITON=1")

    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setattr(pa, "prompt_attention_op", boom)
    assert_close(pa.prompt_attention(q, k, v), REFERENCE.prompt_attention(q, k, v), rtol=1e-6, name="disabled")


def test_fake_implementation_matches_the_kernel(kdevice):
    torch.library.opcheck(pa.prompt_attention_op, make_inputs(2, 2, 3, 5, 16, torch.float32, kdevice),
                          test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("shape", [(16, 8, 400, 49, 64), (8, 12, 400, 256, 64)])
def test_bf16_on_gpu(shape, reference_rule):
    args = make_inputs(*shape, torch.bfloat16, "cuda")
    reference_rule(f"prompt_attention bf16 {shape}", pa.prompt_attention(*args), REFERENCE.prompt_attention, *args)
