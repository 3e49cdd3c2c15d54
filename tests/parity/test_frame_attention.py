"""kernels/frame_attention.py against the reference op (ReferenceOps.frame_attention).

Inputs are laid out as the model makes them: q/k/v are head views of one [BT, L, 3D] projection,
the message key/value head views of a [BT, 1, 2D] one, so the kernel's strided loads are tested.
Under the interpreter (no GPU) the shapes keep BT x H small: the cost is one Python pass per program.
"""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import frame_attention as fa

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")

# (BT, H, L, dh): every token count of the issue (50/51 B/32, 197 B/16, 257 L/14), heads 8/12/16
SHAPES = [(2, 1, 50, 64), (1, 2, 51, 64), (1, 1, 197, 64), (1, 1, 257, 64),
          (1, 8, 50, 64), (1, 12, 50, 64), (1, 16, 51, 64), (3, 2, 17, 32), (1, 1, 1, 64)]


def make_inputs(bt, h, seq, dh, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(bt, seq, 3 * h * dh, generator=g).to(device, dtype)
    kv_msg = torch.randn(bt, 1, 2 * h * dh, generator=g).to(device, dtype)
    heads = lambda x: x.view(x.shape[0], x.shape[1], h, dh).transpose(1, 2)   # [BT, H, L, dh] view
    q, k, v = (heads(t) for t in qkv.chunk(3, dim=-1))
    k_msg, v_msg = (heads(t) for t in kv_msg.chunk(2, dim=-1))
    return q, k, v, k_msg, v_msg


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "bt{}-h{}-L{}-dh{}".format(*s))
def test_fp32_matches_reference(shape, kdevice):
    args = make_inputs(*shape, torch.float32, kdevice)
    assert fa.why_not(*args) is None
    out = fa.frame_attention(*args)
    assert_close(out, REFERENCE.frame_attention(*args), rtol=1e-4, name=f"frame_attention fp32 {shape}")


@pytest.mark.parametrize("shape", [(2, 1, 50, 64), (1, 2, 197, 64), (1, 1, 257, 64), (1, 12, 51, 64)],
                         ids=lambda s: "bt{}-h{}-L{}-dh{}".format(*s))
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    args = make_inputs(*shape, torch.float16, kdevice)
    out = fa.frame_attention(*args)
    assert out.dtype == torch.float16
    reference_rule(f"frame_attention fp16 {shape}", out, REFERENCE.frame_attention, *args)


def test_the_message_token_is_one_more_key(kdevice):
    # a message key far above the others takes all the attention: the output is its value
    q, k, v, k_msg, v_msg = make_inputs(1, 2, 50, 64, torch.float32, kdevice)
    q = q.abs()
    k_msg = torch.full_like(k_msg, 10.0)      # score 10 * sum|q| / 8 ~ 64 against ~N(0, 1) for the others
    out = fa.frame_attention(q, k, v, k_msg, v_msg)
    assert_close(out, v_msg.expand_as(out), rtol=1e-5, name="dominant message token")
    assert_close(out, REFERENCE.frame_attention(q, k, v, k_msg, v_msg), rtol=1e-4, name="vs reference")


def test_output_is_laid_out_for_a_free_head_merge(kdevice):
    out = fa.frame_attention(*make_inputs(1, 2, 50, 64, torch.float32, kdevice))
    assert out.shape == (1, 2, 50, 64) and out.transpose(1, 2).is_contiguous()


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    args = make_inputs(1, 2, 17, 32, torch.float32, kdevice)
    assert "float64" in fa.why_not(*(a.double() for a in args))
    assert "message key/value" in fa.why_not(*args[:3], args[3][:, :, :0], args[4])
    assert "dh <= 128" in fa.why_not(*make_inputs(1, 1, 4, 192, torch.float32, kdevice))
    grad_q = args[0].clone().requires_grad_()
    assert "require grad" in fa.why_not(grad_q, *args[1:])
    out = fa.frame_attention(grad_q, *args[1:])          # reference path keeps autograd working
    out.sum().backward()
    assert grad_q.grad is not None

    def boom(*a):
        raise AssertionError("the kernel ran although XCLIP_DISABLE_TRITON=1")

    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setattr(fa, "frame_attention_op", boom)
    assert "XCLIP_DISABLE_TRITON" in fa.why_not(*args)
    assert_close(fa.frame_attention(*args), REFERENCE.frame_attention(*args), rtol=1e-6, name="disabled")


def test_fake_implementation_matches_the_kernel(kdevice):
    # torch.compile / torch.export trace the op through its fake: schema, shapes and strides must agree
    args = make_inputs(2, 2, 5, 16, torch.float32, kdevice)
    torch.library.opcheck(fa.frame_attention_op, args, test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("shape", [(16, 12, 50, 64), (16, 12, 197, 64), (8, 16, 257, 64)])
def test_bf16_on_gpu(shape, reference_rule):
    args = make_inputs(*shape, torch.bfloat16, "cuda")
    reference_rule(f"frame_attention bf16 {shape}", fa.frame_attention(*args), REFERENCE.frame_attention, *args)
