"""Fused adjacent-frame attention feature of EVL's decoder (docs/model-evl.md §7).

One launch per neighbour (the next frame with table w_next, then the previous frame with w_prev).
A program takes one query frame t of a video and a block of BLOCK_M of its tokens (class token
first) and computes, against key frame t' = t +- 1:

1. per head, the scores q_t[p] . k_t'[p'] over all P key patches (tl.dot over dh in slices of
   BLOCK_DK, P padded to a power of two and masked) and their full-row softmax (P <= 256: the row
   fits, no online rescaling), summed over the heads into A [BLOCK_M, P_pad] in fp32 registers, / H;
2. the contraction with the relative-position table, out[p] = sum_p' A[p, p'] * W[idx(p, p')], done
   as the reference op does it but per tile: A's rows are re-laid out by relative offset
   j = idx(p, p') with a register gather (tl.gather of A at p'(p, j)), giving rel [BLOCK_M, BLOCK_J]
   for a chunk of offsets, and rel @ W[j chunk, C block] is a plain tl.dot. Only the offsets the
   block's grid rows can reach are visited: query rows r_min..r_max reach W rows
   r_min*(2g-1) ..< (r_max+g)*(2g-1) (405 of 729 at g = 14).

The first launch writes every row of every frame (the class-token row, and frame T-1 with no next
frame, as zeros: the output needs no zero fill, T = 1 gives zeros); the second runs on frames 1..T-1
only and adds its feature to what the first wrote (stream order makes that safe). idx(p, p') is
computed from p, p' and g; neither A nor the [P, P, C] gather of W is ever written to memory.

Trade-offs: A stays in registers for the whole channel loop, so the scores are computed once per
frame pair and token block, and the gather is redone per channel block (cheap next to the dot); the
price is one more read and write of the output for the second neighbour, and in fp16/bf16 one more
rounding of the first neighbour's feature (one A tile live at a time is what keeps the kernel free of
register spills; the two neighbours in one program spilled).
fp16/bf16 inputs: fp32 scores, softmax and head mean; rel is rounded to the input dtype for the
tensor-core dot with W (fp32 accumulation), as the reference's own `rel @ w` rounds its operands.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xclip_engine.engine.model.ops import REFERENCE

from . import selfcheck
from .guards import common_reason, dot_precision, grid_reason, next_pow2, on_device

# P <= 256 keys (B/16's g = 14, L/14's g = 16 at 224 px); ptxas for sm_90a showed no spills up to P_pad = 512
# (g <= 22) and spills at 1024, but only g <= 16 is tested
MAX_GRID = 16


# ---- kernel ------------------------------------------------------------------------------------
@triton.jit
def _head_mean_attention(q_base, k_base, sq_l, sq_h, sq_d, sk_l, sk_h, sk_d,
                         offs_m, m_mask, offs_n, n_mask, offs_dk, num_heads, qk_scale, H, DH,
                         BLOCK_M: tl.constexpr, P_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """A [BLOCK_M, P_PAD] fp32: the mean over the H heads of softmax over the key patches (keys at
    token 1 + n of k_base) of the query tokens offs_m of q_base; padded key columns are 0. Only the
    first num_heads heads are summed (0: A = 0, nothing computed). The scores are summed over dh in
    slices of len(offs_dk): a whole [dh, P_PAD] key operand would not fit in registers."""
    a = tl.zeros([BLOCK_M, P_PAD], dtype=tl.float32)
    for h in range(0, num_heads):
        s = tl.zeros([BLOCK_M, P_PAD], dtype=tl.float32)
        for d0 in range(0, DH, offs_dk.shape[0]):
            d = d0 + offs_dk
            d_mask = d < DH
            q = tl.load(q_base + h * sq_h + offs_m[:, None] * sq_l + d[None, :] * sq_d,
                        mask=m_mask[:, None] & d_mask[None, :], other=0.0)             # [BLOCK_M, BLOCK_DK]
            kt = tl.load(k_base + h * sk_h + (offs_n[None, :] + 1) * sk_l + d[:, None] * sk_d,
                         mask=d_mask[:, None] & n_mask[None, :], other=0.0)            # [BLOCK_DK, P_PAD]
            s = tl.dot(q, kt, s, input_precision=PRECISION)
        s = tl.where(n_mask[None, :], s * qk_scale, float("-inf"))                  # base-2 logits
        e = tl.exp2(s - tl.max(s, axis=1)[:, None])
        a += e / tl.sum(e, axis=1)[:, None]
    return a * (1.0 / H)


@triton.jit
def _adjacent_attention_kernel(
    q_ptr, k_ptr,              # [B, T, L, H, dh], any strides
    w_ptr,                     # [(2g-1)^2, C] table of this neighbour
    o_ptr,                     # [B, T, L, C] output
    sq_b, sq_t, sq_l, sq_h, sq_d,
    sk_b, sk_t, sk_l, sk_h, sk_d,
    sw_r, sw_c,
    so_b, so_t, so_l, so_c,
    T, NF, FIRST, SHIFT,       # query frames FIRST .. FIRST+NF-1 of each video, key frame t + SHIFT
    L, H, DH, C, G, qk_scale,  # qk_scale = log2(e) / sqrt(dh): softmax in base 2
    BLOCK_M: tl.constexpr, P_PAD: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr, ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_bt = tl.program_id(0)          # B x NF query frames on axis 0
    pid_m = tl.program_id(1)           # token blocks of the frame
    b = pid_bt // NF
    t = FIRST + pid_bt % NF
    P = G * G
    R = (2 * G - 1) * (2 * G - 1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # query tokens (0 = class token)
    offs_n = tl.arange(0, P_PAD)                              # key patches
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_j = tl.arange(0, BLOCK_J)
    offs_c = tl.arange(0, BLOCK_C)
    m_mask = offs_m < L
    n_mask = offs_n < P

    # a missing neighbour (frame 0's previous, frame T-1's next): both loops below run zero times
    tk = t + SHIFT
    present = (tk >= 0) & (tk < T)
    tk = tl.where(present, tk, t)
    a = _head_mean_attention(q_ptr + b * sq_b + t * sq_t, k_ptr + b * sk_b + tk * sk_t,
                             sq_l, sq_h, sq_d, sk_l, sk_h, sk_d, offs_m, m_mask, offs_n, n_mask, offs_dk,
                             tl.where(present, H, 0), qk_scale, H, DH,
                             BLOCK_M=BLOCK_M, P_PAD=P_PAD, PRECISION=PRECISION)

    # query patch p = token - 1 on the grid: (r, c); the class token and rows past L get no feature
    p = offs_m - 1
    is_patch = (p >= 0) & m_mask
    p = tl.where(is_patch, p, 0)
    r = p // G
    c = p % G
    # the table rows this block can reach: r - r' + g - 1 over r' in [0, g) and r in [r_min, r_max]
    p_first = tl.maximum(pid_m * BLOCK_M - 1, 0)
    p_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 2, P - 1)
    j_lo = (p_first // G) * (2 * G - 1)
    j_hi = tl.where(present, tl.minimum((p_last // G + G) * (2 * G - 1), R), j_lo)

    o_base = o_ptr + b * so_b + t * so_t
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        c_mask = cc < C
        acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for j0 in range(j_lo, j_hi, BLOCK_J):
            j = j0 + offs_j
            j_mask = j < j_hi
            # offset j = (dr, dc) -> key patch p' = (r - dr + g - 1, c - dc + g - 1), if on the grid
            kr = r[:, None] - j[None, :] // (2 * G - 1) + G - 1
            kc = c[:, None] - j[None, :] % (2 * G - 1) + G - 1
            on = (kr >= 0) & (kr < G) & (kc >= 0) & (kc < G) & is_patch[:, None] & j_mask[None, :]
            rel = tl.where(on, tl.gather(a, tl.where(on, kr * G + kc, 0), axis=1), 0.0)   # [BLOCK_M, BLOCK_J]
            w = tl.load(w_ptr + j[:, None] * sw_r + cc[None, :] * sw_c,
                        mask=j_mask[:, None] & c_mask[None, :], other=0.0)             # [BLOCK_J, BLOCK_C]
            acc = tl.dot(rel.to(w.dtype), w, acc, input_precision=PRECISION)
        o_ptrs = o_base + offs_m[:, None] * so_l + cc[None, :] * so_c
        o_mask = m_mask[:, None] & c_mask[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=o_mask)


# ---- launcher ----------------------------------------------------------------------------------
BLOCK_M = 16       # one [16, P_pad <= 256] fp32 A tile held across the channel loop
BLOCK_C = 64
BLOCK_J = 64
BLOCK_DK = 16      # dh slice of the score dot
# 8 warps: with BLOCK_DK = 16 no register spills at P_pad = 256 for fp32, fp16, bf16 (ptxas for sm_90a:
# 188 / 128 registers); 4 warps hit the 255 limit
NUM_WARPS = 8


def _grid(b, t, seq):
    # one program per query frame on axis 0 (up to 2^31 - 1), the few token blocks of the frame on axis 1
    return (b * t, triton.cdiv(seq, BLOCK_M))


def _launch(q, k, w_prev, w_next, grid):
    b, t, seq, h, dh = q.shape
    ch = w_prev.shape[1]
    out = q.new_empty(b, t, seq, ch)
    # two launches, one per neighbour, in stream order: the next frame's feature written for every
    # frame (zeros for the last), then the previous frame's added for frames 1..T-1
    for w, first, frames, shift, accumulate in ((w_next, 0, t, 1, False), (w_prev, 1, t - 1, -1, True)):
        if frames == 0:
            continue
        with on_device(q):
            _adjacent_attention_kernel[_grid(b, frames, seq)](
                q, k, w, out,
                *q.stride(), *k.stride(), *w.stride(), *out.stride(),
                t, frames, first, shift,
                seq, h, dh, ch, grid, 1.4426950408889634 / dh**0.5,
                BLOCK_M=BLOCK_M, P_PAD=max(16, next_pow2(grid * grid)), BLOCK_DK=BLOCK_DK,
                BLOCK_C=BLOCK_C, BLOCK_J=BLOCK_J, ACCUMULATE=accumulate, PRECISION=dot_precision(q.dtype),
                num_warps=NUM_WARPS, num_stages=2,
            )
    return out


# ---- op registration ---------------------------------------------------------------------------
@torch.library.custom_op("xclip::adjacent_frame_feature", mutates_args=())
def adjacent_frame_feature_op(q: torch.Tensor, k: torch.Tensor, w_prev: torch.Tensor, w_next: torch.Tensor,
                              grid: int) -> torch.Tensor:
    return _launch(q, k, w_prev, w_next, grid)


@adjacent_frame_feature_op.register_fake
def _(q, k, w_prev, w_next, grid):
    b, t, seq, _, _ = q.shape
    return q.new_empty(b, t, seq, w_prev.shape[1])


def why_not(q, k, w_prev, w_next, grid) -> str | None:
    """None if the kernel takes these inputs, else why the reference op must run instead."""
    if q.dim() != 5 or k.shape != q.shape:
        return f"q/k shapes {tuple(q.shape)}, {tuple(k.shape)} (need equal [B, T, L, H, dh])"
    b, t, seq, h, dh = q.shape
    if not 1 <= grid <= MAX_GRID:
        return f"grid {grid} (kernel takes 1 <= g <= {MAX_GRID}: P <= {MAX_GRID ** 2} key patches in registers)"
    if seq != 1 + grid * grid:
        return f"L={seq} tokens per frame, expected 1 + {grid}² (class token and the patch grid)"
    rows = (2 * grid - 1) ** 2
    if w_prev.dim() != 2 or w_prev.shape != w_next.shape or w_prev.shape[0] != rows or w_prev.shape[1] == 0:
        return (f"tables {tuple(w_prev.shape)}, {tuple(w_next.shape)} (need two equal [(2g-1)² = {rows}, C], "
                "C >= 1)")
    if b * t == 0 or h == 0 or dh == 0:
        return f"B={b}, T={t}, H={h}, dh={dh} (kernel takes non-empty inputs)"
    if b * t * seq * w_prev.shape[1] >= 2**31:
        return "an output of 2^31 or more elements (the kernel indexes with 32-bit offsets)"
    return grid_reason(_grid(b, t, seq)) or common_reason(q, k, w_prev, w_next)


def adjacent_frame_feature(q, k, w_prev, w_next, grid: int):
    """The fused kernel where it applies and works, else the reference op (same contract as ReferenceOps)."""
    return selfcheck.dispatch("adjacent_attention", why_not(q, k, w_prev, w_next, grid), q,
                              lambda: adjacent_frame_feature_op(q, k, w_prev, w_next, grid),
                              lambda: REFERENCE.adjacent_frame_feature(q, k, w_prev, w_next, grid))


def selfcheck_cases(dtype, device):
    """Inputs of the first-use self-check (kernels/selfcheck.py): q/k as head views of one projection
    (strided), 3 frames (both ends and a middle frame), C not a multiple of the channel block."""
    g = torch.Generator().manual_seed(0)
    b, t, grid, h, dh, ch = 1, 3, 4, 2, 64, 80
    seq = 1 + grid * grid
    q, k = torch.randn(b, t, seq, 2 * h * dh, generator=g).to(device, dtype).view(b, t, seq, 2, h, dh).unbind(3)
    w_prev, w_next = (torch.randn((2 * grid - 1) ** 2, ch, generator=g).to(device, dtype) for _ in range(2))
    return [("adjacent_frame_feature", _launch, REFERENCE.adjacent_frame_feature, (q, k, w_prev, w_next, grid))]
