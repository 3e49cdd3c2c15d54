"""Fused cross-frame (message) attention of X-CLIP's CCT block: LN, q/k/v, attention over T, residual.

The reference (docs/model-xclip.md §4, step 2; VideoX X-CLIP/models/cct.py, CrossFramelAttentionBlock)
takes the message_fc output `msg` [B, T, D] of each video and computes
`msg + out(attention_T(qkv(message_ln(msg))))` with heads = D/64: eager PyTorch spends about eight
launches (layer norm, q/k/v GEMM, chunk + head split, attention, head merge, output GEMM, two adds)
on a [T, D] problem per video (T = 8, 16, 32).

Here one Triton program per (video, head) does the layer norm (recomputed per head: it is T x D,
cheaper than a round trip through memory), that head's q/k/v projection, the softmax attention
over the T message tokens and writes the head's slice of the output, plus `msg + out_bias` for its
columns. The output projection needs every head of a token, so it stays one cuBLAS GEMM whose
epilogue adds that residual (`addmm` with beta = 1): two launches instead of about eight.
Trade-off: a single program per video could also do the output projection, but would run the
whole block on B streaming multiprocessors; B x H programs keep the GPU busy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xclip_engine.engine.model.ops import REFERENCE

from . import selfcheck
from .guards import common_reason, dot_precision, grid_reason, interpreting, next_pow2, on_device


# ---- kernel ------------------------------------------------------------------------------------
@triton.jit
def _message_attention_kernel(
    x_ptr,                     # [B, T, D] message_fc output
    lnw_ptr, lnb_ptr,          # [D] message_ln weight, bias
    w_ptr, wb_ptr,             # [3D, D] q/k/v weight (rows q, k, v), [3D] bias
    ob_ptr,                    # [D] output projection bias
    o_ptr,                     # [B, T, D] attention output, heads merged (input of the output GEMM)
    r_ptr,                     # [B, T, D] msg + output bias (the GEMM's residual)
    sx_b, sx_t, sx_d, sw_o, sw_i, so_b, so_t, so_d, sr_b, sr_t, sr_d,
    H, T, D, DH, eps, qk_scale,   # qk_scale = log2(e) / sqrt(dh)
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)               # videos (x views) can pass 65535: axis 0
    h = tl.program_id(1)               # heads = D / dh: a few dozen
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    t_mask = offs_t < T
    d_mask = offs_d < DH
    x_base = x_ptr + b * sx_b + offs_t[:, None] * sx_t

    # layer norm statistics over D, two passes (mean, then centred squares) for fp32 accuracy
    row_sum = tl.zeros([BLOCK_T], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_base + kk[None, :] * sx_d, mask=t_mask[:, None] & (kk < D)[None, :], other=0.0)
        row_sum += tl.sum(x.to(tl.float32), axis=1)
    mean = row_sum / D
    row_sq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        mask = t_mask[:, None] & (kk < D)[None, :]
        x = tl.load(x_base + kk[None, :] * sx_d, mask=mask, other=0.0).to(tl.float32)
        xc = tl.where(mask, x - mean[:, None], 0.0)
        row_sq += tl.sum(xc * xc, axis=1)
    rstd = 1.0 / tl.sqrt(row_sq / D + eps)

    # this head's q, k, v: [T, D] (normalised) x [D, dh] weight slices, accumulated over D
    acc_q = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    acc_k = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    rows = h * DH + offs_d                                   # q rows of this head; k at +D, v at +2D
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < D
        x = tl.load(x_base + kk[None, :] * sx_d, mask=t_mask[:, None] & k_mask[None, :], other=0.0)
        g = tl.load(lnw_ptr + kk, mask=k_mask, other=0.0).to(tl.float32)
        beta = tl.load(lnb_ptr + kk, mask=k_mask, other=0.0).to(tl.float32)
        xn = ((x.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]).to(x.dtype)
        w_off = rows[None, :] * sw_o + kk[:, None] * sw_i    # [BLOCK_K, BLOCK_D]: W^T slice
        w_mask = k_mask[:, None] & d_mask[None, :]
        acc_q += tl.dot(xn, tl.load(w_ptr + w_off, mask=w_mask, other=0.0), input_precision=PRECISION)
        acc_k += tl.dot(xn, tl.load(w_ptr + D * sw_o + w_off, mask=w_mask, other=0.0), input_precision=PRECISION)
        acc_v += tl.dot(xn, tl.load(w_ptr + 2 * D * sw_o + w_off, mask=w_mask, other=0.0),
                        input_precision=PRECISION)
    dt = x_ptr.dtype.element_ty
    q = (acc_q + tl.load(wb_ptr + rows, mask=d_mask, other=0.0).to(tl.float32)[None, :]).to(dt)
    k = (acc_k + tl.load(wb_ptr + D + rows, mask=d_mask, other=0.0).to(tl.float32)[None, :]).to(dt)
    v = (acc_v + tl.load(wb_ptr + 2 * D + rows, mask=d_mask, other=0.0).to(tl.float32)[None, :]).to(dt)

    # attention over the T message tokens of this video (all of them fit in one tile)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale          # [BLOCK_T, BLOCK_T]
    s = tl.where(t_mask[None, :], s, float("-inf"))
    p = tl.exp2(s - tl.max(s, axis=1)[:, None])
    o = tl.dot(p.to(dt), v, input_precision=PRECISION) / tl.sum(p, axis=1)[:, None]
    out_mask = t_mask[:, None] & d_mask[None, :]
    tl.store(o_ptr + b * so_b + offs_t[:, None] * so_t + rows[None, :] * so_d, o.to(dt), mask=out_mask)

    # residual for the output GEMM: msg + out_bias on this head's columns
    xr = tl.load(x_base + rows[None, :] * sx_d, mask=out_mask, other=0.0).to(tl.float32)
    ob = tl.load(ob_ptr + rows, mask=d_mask, other=0.0).to(tl.float32)
    tl.store(r_ptr + b * sr_b + offs_t[:, None] * sr_t + rows[None, :] * sr_d, (xr + ob[None, :]).to(dt),
             mask=out_mask)


# ---- launcher ----------------------------------------------------------------------------------
def _grid(b, heads):
    # the batch (B x views, unbounded) on axis 0 (up to 2^31 - 1), the heads on axis 1 (<= 65535)
    return (b, heads)


def _launch(msg, ln_w, ln_b, eps, qkv_w, qkv_b, out_w, out_b, heads):
    b, t, d = msg.shape
    dh = d // heads
    o = torch.empty_like(msg, memory_format=torch.contiguous_format)
    res = torch.empty_like(o)
    # 64-wide slices of D keep three [64, dh] weight tiles in shared memory on a GPU; the
    # interpreter pays per loop step, not per element, so it takes D in 256-wide slices
    block_k = 256 if interpreting() else 64
    with on_device(msg):
        _message_attention_kernel[_grid(b, heads)](
            msg, ln_w, ln_b, qkv_w, qkv_b, out_b, o, res,
            *msg.stride(), *qkv_w.stride(), *o.stride(), *res.stride(),
            heads, t, d, dh, eps, 1.4426950408889634 / dh**0.5,
            BLOCK_T=max(16, next_pow2(t)), BLOCK_K=block_k, BLOCK_D=max(16, next_pow2(dh)),
            PRECISION=dot_precision(msg.dtype), num_warps=4, num_stages=2,
        )
    # out projection of all heads + (msg + out_bias), the residual added in the GEMM's epilogue
    return torch.addmm(res.view(b * t, d), o.view(b * t, d), out_w.t()).view(b, t, d)


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::message_attention", mutates_args=())
def message_attention_op(msg: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, eps: float,
                         qkv_w: torch.Tensor, qkv_b: torch.Tensor, out_w: torch.Tensor, out_b: torch.Tensor,
                         heads: int) -> torch.Tensor:
    return _launch(msg, ln_w, ln_b, eps, qkv_w, qkv_b, out_w, out_b, heads)


@message_attention_op.register_fake
def _(msg, ln_w, ln_b, eps, qkv_w, qkv_b, out_w, out_b, heads):
    return torch.empty_like(msg, memory_format=torch.contiguous_format)


def why_not(msg, ln_w, ln_b, eps: float, qkv_w, qkv_b, out_w, out_b, heads: int) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if msg.dim() != 3:
        return f"msg shape {tuple(msg.shape)} (need [B, T, D])"
    b, t, d = msg.shape
    if any(p is None for p in (ln_w, ln_b, qkv_b, out_b)):
        return "a layer norm or linear layer without bias"
    if d % heads or ln_w.shape != (d,) or qkv_w.shape != (3 * d, d) or out_w.shape != (d, d):
        return f"D={d}, heads={heads}, weights {tuple(qkv_w.shape)}, {tuple(out_w.shape)} do not fit"
    if not 1 <= t <= 128 or d // heads > 128 or b == 0:
        return f"T={t}, dh={d // heads} (kernel takes 1 <= T <= 128, dh <= 128)"
    return grid_reason(_grid(b, heads)) or common_reason(msg, ln_w, ln_b, qkv_w, qkv_b, out_w, out_b)


def message_attention(msg, ln_w, ln_b, eps: float, qkv_w, qkv_b, out_w, out_b, heads: int):
    """msg + out(attention over T (qkv(layer_norm(msg)))), fused where it applies (ReferenceOps' contract)."""
    args = (msg, ln_w, ln_b, eps, qkv_w, qkv_b, out_w, out_b, heads)
    return selfcheck.dispatch("message_attention", why_not(*args), msg, lambda: message_attention_op(*args),
                              lambda: REFERENCE.message_attention(*args))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): trained-CLIP-like weights (gain near
    1, non-zero biases), messages with a per-channel offset, T not a power of two."""
    g = torch.Generator().manual_seed(0)
    b, t, heads, dh = 2, 7, 2, 64
    d = heads * dh
    r = lambda *shape, mean=0.0, std=1.0: (mean + std * torch.randn(*shape, generator=g)).to(device, dtype)
    msg = r(d) + r(b, t, d)
    args = (msg, r(d, mean=1.0, std=0.2), r(d, std=0.2), 1e-5, r(3 * d, d, std=d**-0.5), r(3 * d, std=0.2),
            r(d, d, std=d**-0.5), r(d, std=0.2), heads)
    return [("message_attention", _launch, REFERENCE.message_attention, args)]
