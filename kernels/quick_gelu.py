"""Bias + QuickGELU, the middle of CLIP's MLP: g = z * sigmoid(1.702 z) with z = h + bias.

Source of the activation: OpenAI CLIP model.py (QuickGELU), used by every MLP of X-CLIP
(DESIGN.md section 1, step 5). The first MLP GEMM runs without its bias (cuBLAS), then this one
elementwise pass adds the bias and applies the activation, where eager PyTorch reads and writes
the [M, 4D] hidden tensor three times (scale, sigmoid, multiply). Arithmetic in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import selfcheck
from .guards import common_reason, interpreting, on_device


# ---- reference ---------------------------------------------------------------------------------
def bias_quick_gelu_ref(h, bias, upcast: bool = False):
    """h [..., N] (fc1 output without bias), bias [N] -> z * sigmoid(1.702 z), z = h + bias (fp32 if `upcast`)."""
    z = (h.float() + bias.float()) if upcast else h + bias
    return z * torch.sigmoid(1.702 * z)


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


def mlp(x, fc1, fc2):
    """CLIP's MLP: fc2(quick_gelu(fc1(x))) with fc1's bias added inside the activation kernel."""
    from xclip_engine.engine.model.ops import REFERENCE

    reason = "linear layer without bias" if fc1.bias is None else \
        "empty input" if x.numel() == 0 else common_reason(x, fc1.weight, fc1.bias)
    return selfcheck.dispatch("quick_gelu", reason, x,
                              lambda: fc2(bias_quick_gelu_op(torch.nn.functional.linear(x, fc1.weight), fc1.bias)),
                              lambda: REFERENCE.mlp(x, fc1, fc2))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): both tails of the sigmoid, a size
    no block divides."""
    g = torch.Generator().manual_seed(0)
    h = (3.0 * torch.randn(37, 200, generator=g)).to(device, dtype)
    bias = torch.randn(200, generator=g).to(device, dtype)
    return [("bias_quick_gelu", _launch, bias_quick_gelu_ref, (h, bias))]
