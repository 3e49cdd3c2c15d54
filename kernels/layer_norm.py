"""Layer norm over the last dimension, optionally fused with the residual add that precedes it.

Formula: y = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias, with s = x (plain) or
s = x + delta (fused: the block's `x = x + attn(...)` followed by `ln_2(x)`, docs/model-xclip.md §4,
step 5); the fused form returns s too, since the block needs it for the next residual.
Statistics in fp32, two passes over the row held in registers (centred squares, no E[x^2] - mean^2
cancellation). Each program normalises several rows when D is small, so the tiny model and the
interpreter do not pay one program per 64-wide row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xclip_engine.engine.model.ops import REFERENCE

from . import selfcheck
from .guards import common_reason, interpreting, next_pow2, on_device


# ---- kernel ------------------------------------------------------------------------------------
@triton.jit
def _layer_norm_kernel(
    x_ptr, d_ptr,              # [M, D] input, [M, D] residual delta (read only when HAS_DELTA)
    w_ptr, b_ptr,              # [D] weight, bias
    y_ptr, s_ptr,              # [M, D] normalised output, [M, D] x + delta (written when HAS_DELTA)
    sx, sd, sy, ss,            # row strides (columns are contiguous)
    M, D, eps,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DELTA: tl.constexpr,
):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_D)
    c_mask = c < D
    mask = (r < M)[:, None] & c_mask[None, :]
    x = tl.load(x_ptr + r[:, None] * sx + c[None, :], mask=mask, other=0.0)
    if HAS_DELTA:
        s = x + tl.load(d_ptr + r[:, None] * sd + c[None, :], mask=mask, other=0.0)
        tl.store(s_ptr + r[:, None] * ss + c[None, :], s, mask=mask)
        x = s                  # normalise the sum as stored (rounded to the input dtype), as the reference does
    xf = x.to(tl.float32)
    mean = tl.sum(xf, axis=1) / D
    xc = tl.where(mask, xf - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    w = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + r[:, None] * sy + c[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


# ---- launcher ----------------------------------------------------------------------------------
def _rows(x):
    # [..., D] -> [M, D] with contiguous columns (a view where the layout allows, else a copy)
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _rows_per_program(block_d):
    # about 4096 elements per program on a GPU (32 per thread at 4 warps); the interpreter pays per
    # program, not per element, so it takes 16x more rows at a time
    return max(1, (65536 if interpreting() else 4096) // block_d)


def _grid(m, d):
    # one axis: rows / ROWS programs, far below axis 0's 2^31 - 1 for any tensor of < 2^31 elements
    return (triton.cdiv(m, _rows_per_program(next_pow2(d))),)


def _launch(x, delta, weight, bias, eps):
    d = x.shape[-1]
    x2 = _rows(x)
    d2 = _rows(delta) if delta is not None else x2
    m = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    s = torch.empty_like(y) if delta is not None else y
    block_d = next_pow2(d)
    with on_device(x):
        _layer_norm_kernel[_grid(m, d)](
            x2, d2, weight, bias, y.view(m, d), s.view(m, d),
            x2.stride(0), d2.stride(0), d, d, m, d, eps,
            ROWS=_rows_per_program(block_d), BLOCK_D=block_d, HAS_DELTA=delta is not None,
            num_warps=4 if block_d <= 2048 else 8,
        )
    return y, s


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::layer_norm", mutates_args=())
def layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, None, weight, bias, eps)[0]


@layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("xclip::add_layer_norm", mutates_args=())
def add_layer_norm_op(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, s = _launch(x, delta, weight, bias, eps)
    return s, y


@add_layer_norm_op.register_fake
def _(x, delta, weight, bias, eps):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


def why_not(x, weight, bias, delta=None) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if weight is None or bias is None:
        return "layer norm without weight or bias"
    d = x.shape[-1] if x.dim() else 0
    if x.dim() < 1 or x.numel() == 0 or weight.shape != (d,) or bias.shape != (d,) or d > 16384:
        return f"x shape {tuple(x.shape)}, weight {tuple(weight.shape)} (need [..., D] with D <= 16384)"
    if delta is not None and delta.shape != x.shape:
        return f"residual shape {tuple(delta.shape)} != x shape {tuple(x.shape)}"
    extra = (delta,) if delta is not None else ()
    return common_reason(x, weight, bias, *extra)


def layer_norm(x, weight, bias, eps: float):
    return selfcheck.dispatch("layer_norm", why_not(x, weight, bias), x, lambda: layer_norm_op(x, weight, bias, eps),
                              lambda: REFERENCE.layer_norm(x, weight, bias, eps))


def add_layer_norm(x, delta, weight, bias, eps: float):
    """(x + delta, LN(x + delta)) in one pass."""
    return selfcheck.dispatch("layer_norm", why_not(x, weight, bias, delta), x,
                              lambda: add_layer_norm_op(x, delta, weight, bias, eps),
                              lambda: REFERENCE.add_layer_norm(x, delta, weight, bias, eps))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): a residual stream with per-channel
    offsets (mean far from 0), D not a power of two, plain and with the fused residual add."""
    g = torch.Generator().manual_seed(0)
    shape, d = (2, 37, 96), 96
    x = (3.0 * torch.randn(d, generator=g) + torch.randn(shape, generator=g)).to(device, dtype)
    delta = torch.randn(shape, generator=g).to(device, dtype)
    w = (1.0 + 0.2 * torch.randn(d, generator=g)).to(device, dtype)
    b = (0.2 * torch.randn(d, generator=g)).to(device, dtype)
    return [("layer_norm", lambda *a: _launch(a[0], None, *a[1:])[0], REFERENCE.layer_norm, (x, w, b, 1e-5)),
            ("add_layer_norm", lambda *a: _launch(*a)[::-1], REFERENCE.add_layer_norm, (x, delta, w, b, 1e-5))]
