"""Fused intra-frame attention of X-CLIP's CCT block: each frame's L tokens plus its message token.

The reference (docs/model-xclip.md §4, step 4; VideoX X-CLIP/models/cct.py) appends the message
token to the L frame tokens, runs attention over L+1 tokens and drops the message token's output.
This kernel is flash attention (Dao et al., arXiv 2205.14135: online softmax, fp32 accumulator)
over the L keys, with the message token's key and value read from their own tensors as one more
key, so the [L+1] concatenation and the slice are never materialised and no output row is
computed for the message token. Rows past L (L = 50, 197, 257 are not multiples of the block)
are masked.

Trade-off: the message key is folded in first, before the key loop, so the running maximum is
finite from the start (no -inf - -inf); it costs one [BLOCK_M, dh] multiply-reduce per program.
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
def _frame_attention_kernel(
    q_ptr, k_ptr, v_ptr,       # [BT, H, L, dh], any strides
    km_ptr, vm_ptr,            # [BT, H, 1, dh] message token key / value
    o_ptr,                     # [BT, H, L, dh] output
    sq_b, sq_h, sq_l, sq_d,
    sk_b, sk_h, sk_l, sk_d,
    sv_b, sv_h, sv_l, sv_d,
    skm_b, skm_h, skm_d,
    svm_b, svm_h, svm_d,
    so_b, so_h, so_l, so_d,
    H, L, DH, qk_scale,        # qk_scale = log2(e) / sqrt(dh): softmax in base 2
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)          # BT x H can pass 65535 (16 x 12 views x 32 frames x 12 heads): axis 0
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < L
    d_mask = offs_d < DH

    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)                   # [BLOCK_M, BLOCK_D]

    # the message token: one key every query of this frame sees
    km = tl.load(km_ptr + b * skm_b + h * skm_h + offs_d * skm_d, mask=d_mask, other=0.0)
    vm = tl.load(vm_ptr + b * svm_b + h * svm_h + offs_d * svm_d, mask=d_mask, other=0.0)
    m_i = tl.sum(q.to(tl.float32) * km.to(tl.float32)[None, :], axis=1) * qk_scale  # [BLOCK_M]
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)                                  # exp2(m_i - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32) + vm.to(tl.float32)[None, :]

    acc = attend_key_tiles(q, m_i, l_i, acc, k_ptr + b * sk_b + h * sk_h, sk_l, sk_d,
                           v_ptr + b * sv_b + h * sv_h, sv_l, sv_d, L, qk_scale, offs_n, offs_d, d_mask,
                           BLOCK_N=BLOCK_N, PRECISION=PRECISION)
    tl.store(o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_d[None, :] * so_d,
             acc.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# ---- launcher ----------------------------------------------------------------------------------
BLOCK_M = 64


def _grid(bt, h, seq):
    # one program per (frame, head) on axis 0 (up to 2^31 - 1), the few query tiles of L on axis 1
    return (bt * h, triton.cdiv(seq, BLOCK_M))


def _launch(q, k, v, k_msg, v_msg):
    bt, h, seq, dh = q.shape
    o = heads_last_output(q)
    block_d = max(16, next_pow2(dh))
    # 64 x 64 tiles with 4 warps: the flash-attention tutorial's choice for dh <= 64; a [128, 128]
    # dh tile halves BLOCK_N to keep the K/V tiles in shared memory.
    block_m, block_n = BLOCK_M, (64 if block_d <= 64 else 32)
    with on_device(q):
        _frame_attention_kernel[_grid(bt, h, seq)](
            q, k, v, k_msg, v_msg, o,
            *q.stride(), *k.stride(), *v.stride(),
            k_msg.stride(0), k_msg.stride(1), k_msg.stride(3),
            v_msg.stride(0), v_msg.stride(1), v_msg.stride(3),
            *o.stride(),
            h, seq, dh, 1.4426950408889634 / dh**0.5,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=dot_precision(q.dtype),
            num_warps=4, num_stages=2,
        )
    return o


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::frame_attention", mutates_args=())
def frame_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_msg: torch.Tensor,
                       v_msg: torch.Tensor) -> torch.Tensor:
    return _launch(q, k, v, k_msg, v_msg)


@frame_attention_op.register_fake
def _(q, k, v, k_msg, v_msg):
    return heads_last_output(q)


def why_not(q, k, v, k_msg, v_msg) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        return f"q/k/v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} (need equal [BT, H, L, dh])"
    bt, h, _, dh = q.shape
    if k_msg.shape != (bt, h, 1, dh) or v_msg.shape != (bt, h, 1, dh):
        return f"message key/value shapes {tuple(k_msg.shape)}, {tuple(v_msg.shape)} (need [BT, H, 1, dh])"
    if q.shape[2] == 0 or dh > 128:
        return f"L={q.shape[2]}, dh={dh} (kernel takes L >= 1, dh <= 128)"
    return grid_reason(_grid(bt, h, q.shape[2])) or common_reason(q, k, v, k_msg, v_msg)


def frame_attention(q, k, v, k_msg, v_msg):
    """The fused kernel where it applies and works, else the reference op (same contract as ReferenceOps)."""
    return selfcheck.dispatch("frame_attention", why_not(q, k, v, k_msg, v_msg), q,
                              lambda: frame_attention_op(q, k, v, k_msg, v_msg),
                              lambda: REFERENCE.frame_attention(q, k, v, k_msg, v_msg))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): the model's strided head views, L
    not a multiple of the tile."""
    g = torch.Generator().manual_seed(0)
    bt, h, seq, dh = 2, 2, 37, 64
    heads = lambda x: x.view(bt, x.shape[1], h, dh).transpose(1, 2)
    q, k, v = (heads(t) for t in torch.randn(bt, seq, 3 * h * dh, generator=g).to(device, dtype).chunk(3, -1))
    km, vm = (heads(t) for t in torch.randn(bt, 1, 2 * h * dh, generator=g).to(device, dtype).chunk(2, -1))
    return [("frame_attention", _launch, REFERENCE.frame_attention, (q, k, v, km, vm))]
