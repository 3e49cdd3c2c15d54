"""Fused cross-attention of X-CLIP's video-specific prompt generator: K label queries over N visual tokens.

The reference (docs/model-xclip.md §9, prompt generator; VideoX X-CLIP/models/prompt.py) runs, per
video, softmax(q k^T / sqrt(dh)) v with q the K label features (K = 1 ... 400 labels) and k/v the
N visual tokens (49, 196, 256 patches). This kernel keeps the [K, N] scores and probabilities in
registers (online softmax, fp32 accumulator, as flash attention, Dao et al. arXiv 2205.14135), so
the score matrix of B x H x K x N never reaches memory. The queries are read through their strides:
the first prompt layer's label features are the same for every video, and an expanded (stride 0)
batch is read without a copy. Rows past K and keys past N are masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xclip_engine.engine.model.ops import REFERENCE

from . import selfcheck
from .guards import common_reason, dot_precision, grid_reason, next_pow2, on_device
from .online_softmax import attend_key_tiles, heads_last_output


# ---- kernel ------------------------------------------------------------------------------------
@triton.jit
def _prompt_attention_kernel(
    q_ptr,                     # [B, H, K, dh] label queries, any strides (batch stride 0 allowed)
    k_ptr, v_ptr,              # [B, H, N, dh] visual keys / values
    o_ptr,                     # [B, H, K, dh] output
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    so_b, so_h, so_l, so_d,
    H, KQ, N, DH, qk_scale,    # qk_scale = log2(e) / sqrt(dh): softmax in base 2
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)          # B x H can pass 65535 (CUDA's cap on axes 1, 2): axis 0
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < KQ
    d_mask = offs_d < DH
    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)                   # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # N >= 1 (guarded), so the first tile has a real key and m_i is finite after it
    acc = attend_key_tiles(q, m_i, l_i, acc, k_ptr + b * sk_b + h * sk_h, sk_l, sk_d,
                           v_ptr + b * sv_b + h * sv_h, sv_l, sv_d, N, qk_scale, offs_n, offs_d, d_mask,
                           BLOCK_N=BLOCK_N, PRECISION=PRECISION)
    tl.store(o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_d[None, :] * so_d,
             acc.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# ---- launcher ----------------------------------------------------------------------------------
def _block_m(kq):
    # few labels (K = 1, 3) waste most of a 64-row tile: 16 rows is tl.dot's minimum
    return 16 if kq <= 16 else 64


def _grid(b, h, kq):
    # one program per (video, head) on axis 0 (up to 2^31 - 1), the few label tiles on axis 1
    return (b * h, triton.cdiv(kq, _block_m(kq)))


def _launch(q, k, v):
    b, h, kq, dh = q.shape
    n = k.shape[2]
    o = heads_last_output(q)
    block_d = max(16, next_pow2(dh))
    block_n = 64 if block_d <= 64 else 32
    with on_device(q):
        _prompt_attention_kernel[_grid(b, h, kq)](
            q, k, v, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            h, kq, n, dh, 1.4426950408889634 / dh**0.5,
            BLOCK_M=_block_m(kq), BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=dot_precision(q.dtype),
            num_warps=4, num_stages=2,
        )
    return o


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::prompt_attention", mutates_args=())
def prompt_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _launch(q, k, v)


@prompt_attention_op.register_fake
def _(q, k, v):
    return heads_last_output(q)


def why_not(q, k, v) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] \
            or q.shape[3] != k.shape[3]:
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} (need [B, H, K, dh], [B, H, N, dh])"
    if q.numel() == 0 or k.shape[2] == 0 or q.shape[3] > 128:
        return f"K={q.shape[2]}, N={k.shape[2]}, dh={q.shape[3]} (kernel takes K, N >= 1, dh <= 128)"
    return grid_reason(_grid(*q.shape[:3])) or common_reason(q, k, v)


def prompt_attention(q, k, v):
    """The fused kernel where it applies and works, else the reference op (same contract as ReferenceOps)."""
    return selfcheck.dispatch("prompt_attention", why_not(q, k, v), q, lambda: prompt_attention_op(q, k, v),
                              lambda: REFERENCE.prompt_attention(q, k, v))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): label queries shared by the videos
    (batch stride 0), K and N not multiples of the tiles."""
    g = torch.Generator().manual_seed(0)
    b, h, kq, n, dh = 2, 2, 5, 37, 64
    heads = lambda x: x.view(x.shape[0], x.shape[1], h, dh).transpose(1, 2)
    q = heads(torch.randn(1, kq, h * dh, generator=g).to(device, dtype)).expand(b, -1, -1, -1)
    k, v = (heads(t) for t in torch.randn(b, n, 2 * h * dh, generator=g).to(device, dtype).chunk(2, -1))
    return [("prompt_attention", _launch, REFERENCE.prompt_attention, (q, k, v))]
