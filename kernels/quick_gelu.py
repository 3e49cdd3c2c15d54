"""Bias + QuickGELU, the middle of CLIP's MLP: g = z * sigmoid(1.702 z) with z = h + bias.

Source of the activation: OpenAI CLIP model.py (QuickGELU), used by every MLP of X-CLIP
(docs/model-xclip.md §4, step 5). The first MLP GEMM runs without its bias (cuBLAS), then this one
elementwise pass adds the bias and applies the activation, where eager PyTorch reads and writes
the [M, 4D] hidden tensor three times (scale, sigmoid, multiply). Arithmetic in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from xclip_engine.engine.model.ops import REFERENCE

from . import selfcheck
from .guards import common_reason, interpreting, on_device


# ---- kernel ------------------------------------------------------------------------------------
@triton.jit
def _bias_quick_gelu_kernel(
    h_ptr,                     # [M * N] contiguous fc1 output (no bias)
    b_ptr,                     # [N] fc1 bias
    o_ptr,                     # [M * N] output
    numel, N,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + offs, (z * tl.sigmoid(1.702 * z)).to(o_ptr.dtype.element_ty), mask=mask)


# ---- launcher ----------------------------------------------------------------------------------
def _block():
    # the interpreter runs programs one after another, so it gets few large ones
    return 65536 if interpreting() else 2048


def _grid(numel):
    # one axis: numel / 2048 programs, far below axis 0's 2^31 - 1 for any tensor of < 2^31 elements
    return (triton.cdiv(numel, _block()),)


def _launch(h, bias):
    out = torch.empty_like(h, memory_format=torch.contiguous_format)
    n = h.numel()
    with on_device(h):
        _bias_quick_gelu_kernel[_grid(n)](h, bias, out, n, h.shape[-1], BLOCK=_block(), num_warps=4)
    return out


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::bias_quick_gelu", mutates_args=())
def bias_quick_gelu_op(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _launch(h, bias)


@bias_quick_gelu_op.register_fake
def _(h, bias):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


def why_not(h, bias) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if bias is None:
        return "linear layer without bias"
    if h.dim() < 1 or h.numel() == 0 or bias.shape != h.shape[-1:]:
        return f"hidden shape {tuple(h.shape)}, bias {tuple(bias.shape)} (need [..., N] and [N])"
    if not h.is_contiguous():
        return "hidden tensor not contiguous"
    return common_reason(h, bias)


def _fused_mlp(x, w1, b1, w2, b2, activation):
    # fc1's GEMM without its bias, the bias added inside the activation kernel, then fc2
    return F.linear(activation(F.linear(x, w1), b1), w2, b2)


def mlp(x, w1, b1, w2, b2):
    """CLIP's MLP fc2(quick_gelu(fc1(x))) with fc1's bias b1 added inside the activation kernel."""
    reason = "linear layer without bias" if b1 is None else \
        "empty input" if x.numel() == 0 else common_reason(x, w1, b1, w2, *(() if b2 is None else (b2,)))
    return selfcheck.dispatch("quick_gelu", reason, x, lambda: _fused_mlp(x, w1, b1, w2, b2, bias_quick_gelu_op),
                              lambda: REFERENCE.mlp(x, w1, b1, w2, b2))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): the whole MLP against ReferenceOps.mlp
    (the activation alone is no op of the contract), weights scaled so fc1's outputs reach both tails
    of the sigmoid, a hidden width no block divides."""
    g = torch.Generator().manual_seed(0)
    d, hidden = 64, 200
    r = lambda *shape, std=1.0: (std * torch.randn(*shape, generator=g)).to(device, dtype)
    args = (r(37, d), r(hidden, d, std=3.0 * d**-0.5), r(hidden), r(d, hidden, std=hidden**-0.5), r(d, std=0.2))
    return [("mlp", lambda *a: _fused_mlp(*a, _launch), REFERENCE.mlp, args)]
