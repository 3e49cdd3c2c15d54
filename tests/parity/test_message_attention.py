"""kernels/message_attention.py against the reference op (ReferenceOps.message_attention).

The weights are the parameters of the model's own LayerNorm and SelfAttention modules, passed as
tensors as CrossFrameBlock passes them, with random values of the scale a trained CLIP has
(layer-norm gain near 1, biases non-zero), so every term of the block matters.
"""

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.layers import LayerNorm, SelfAttention
from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import message_attention as ma

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")


def make_block(d, heads, dtype, device, seed=0):
    torch.manual_seed(seed)
    ln, attn = LayerNorm(d, eps=1e-5), SelfAttention(d, heads)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.2)
        ln.bias.normal_(0.0, 0.2)
        for lin in (attn.qkv, attn.out):
            lin.weight.normal_(0.0, d**-0.5)
            lin.bias.normal_(0.0, 0.2)
    return ln.to(device, dtype).eval(), attn.to(device, dtype).eval()


def weights(ln, attn):
    """The op's arguments after msg, from the modules: what CrossFrameBlock.messages passes."""
    return (ln.weight, ln.bias, ln.eps, attn.qkv.weight, attn.qkv.bias, attn.out.weight, attn.out.bias, attn.heads)


def make_msg(b, t, d, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    # message_fc outputs: an offset per channel plus noise (the mean matters to the layer norm)
    return (torch.randn(d, generator=g) + torch.randn(b, t, d, generator=g)).to(device, dtype)


# (B, T, heads, dh): T of the issue (1, 8, 16, 32), heads 8/12/16 at dh 64, and the tiny model's shape
SHAPES_FP32 = [(1, 1, 8, 64), (1, 8, 12, 64), (1, 16, 16, 64), (1, 32, 8, 64), (3, 4, 2, 32)]
SHAPES_FP16 = [(1, 8, 12, 64), (1, 32, 8, 64), (2, 5, 2, 32)]


@torch.no_grad()
@pytest.mark.parametrize("shape", SHAPES_FP32, ids=lambda s: "b{}-t{}-h{}-dh{}".format(*s))
def test_fp32_matches_reference(shape, kdevice):
    b, t, heads, dh = shape
    ln, attn = make_block(heads * dh, heads, torch.float32, kdevice)
    msg = make_msg(b, t, heads * dh, torch.float32, kdevice)
    args = (msg, *weights(ln, attn))
    assert ma.why_not(*args) is None
    out = ma.message_attention(*args)
    expected = REFERENCE.message_attention(*args)
    assert_close(out, expected, rtol=1e-4, name=f"message_attention fp32 {shape}")
    # the residual is not what carries the match: the attention branch alone agrees too
    assert_close(out - msg, expected - msg, rtol=1e-4, name=f"attention branch fp32 {shape}")


@torch.no_grad()
@pytest.mark.parametrize("shape", SHAPES_FP16, ids=lambda s: "b{}-t{}-h{}-dh{}".format(*s))
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    b, t, heads, dh = shape
    args = (make_msg(b, t, heads * dh, torch.float16, kdevice),
            *weights(*make_block(heads * dh, heads, torch.float16, kdevice)))
    out = ma.message_attention(*args)
    assert out.dtype == torch.float16
    reference_rule(f"message_attention fp16 {shape}", out, REFERENCE.message_attention, *args)


@torch.no_grad()
def test_videos_do_not_mix(kdevice):
    # attention runs over the T frames of one video: changing video 1 leaves video 0 as it was
    ln, attn = make_block(64, 2, torch.float32, kdevice)
    msg = make_msg(2, 4, 64, torch.float32, kdevice)
    out = ma.message_attention(msg, *weights(ln, attn))
    msg2 = msg.clone()
    msg2[1] += 1.0
    out2 = ma.message_attention(msg2, *weights(ln, attn))
    assert torch.equal(out[0], out2[0])
    assert (out[1] - out2[1]).abs().max() > 0.1


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    ln, attn = make_block(64, 2, torch.float32, kdevice)
    msg = make_msg(1, 4, 64, torch.float32, kdevice)
    w = weights(ln, attn)
    assert "T=200" in ma.why_not(make_msg(1, 200, 64, torch.float32, kdevice), *w)
    assert "need [B, T, D]" in ma.why_not(msg[0], *w)
    assert "require grad" in ma.why_not(msg, *w)             # module parameters require grad
    with torch.no_grad():
        assert ma.why_not(msg, *w) is None
        assert "float16" in ma.why_not(msg.half(), *w)       # mixed dtypes
    out = ma.message_attention(msg, *w)                      # with grad: the reference runs, autograd works
    out.sum().backward()
    assert attn.qkv.weight.grad is not None

    def boom(*a):
        raise AssertionError("the kernel ran although XCLIP_DISABLE_TRITON=1")

    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setattr(ma, "message_attention_op", boom)
    with torch.no_grad():
        assert_close(ma.message_attention(msg, *w), REFERENCE.message_attention(msg, *w), rtol=1e-6, name="disabled")


def test_fake_implementation_matches_the_kernel(kdevice):
    ln, attn = make_block(32, 2, torch.float32, kdevice)
    msg = make_msg(2, 3, 32, torch.float32, kdevice)
    args = (msg, ln.weight.detach(), ln.bias.detach(), 1e-5, attn.qkv.weight.detach(), attn.qkv.bias.detach(),
            attn.out.weight.detach(), attn.out.bias.detach(), 2)
    torch.library.opcheck(ma.message_attention_op, args, test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@torch.no_grad()
@pytest.mark.parametrize("shape", [(16, 8, 12, 64), (8, 32, 16, 64)])
def test_bf16_on_gpu(shape, reference_rule):
    b, t, heads, dh = shape
    args = (make_msg(b, t, heads * dh, torch.bfloat16, "cuda"),
            *weights(*make_block(heads * dh, heads, torch.bfloat16, "cuda")))
    reference_rule(f"message_attention bf16 {shape}", ma.message_attention(*args), REFERENCE.message_attention, *args)
