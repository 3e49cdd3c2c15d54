"""The inner loop that the frame and prompt attention kernels share: flash attention over key tiles.

Online softmax (Milakov & Gimelshein 2018; Dao et al. 2022, FlashAttention): one pass over the
keys in BLOCK_N tiles, keeping per query row the running maximum m_i, the running sum l_i of
exp2(score - m_i) and the weighted sum of values acc, rescaled whenever the maximum grows. The
kernels differ only in how they start (the frame kernel begins with its message token already
counted) and in their shapes, so each passes its starting state in.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_key_tiles(q, m_i, l_i, acc,
                     k_base, sk_l, sk_d, v_base, sv_l, sv_d, num_keys, qk_scale, offs_n, offs_d, d_mask,
                     BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """q [BLOCK_M, BLOCK_D] against keys/values 0..num_keys-1 -> the normalised output [BLOCK_M, BLOCK_D] (fp32).

    m_i, l_i [BLOCK_M] and acc [BLOCK_M, BLOCK_D] (fp32) are the state before the first tile: (-inf, 0,
    0) for nothing seen yet. qk_scale = log2(e) / sqrt(dh): the softmax runs in base 2. With -inf as the
    starting maximum the first tile must hold a real key (the launchers guard num_keys >= 1).
    """
    for start in range(0, num_keys, BLOCK_N):
        n = start + offs_n
        n_mask = n < num_keys
        kt = tl.load(k_base + n[None, :] * sk_l + offs_d[:, None] * sk_d,
                     mask=d_mask[:, None] & n_mask[None, :], other=0.0)             # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale                   # [BLOCK_M, BLOCK_N]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vb = tl.load(v_base + n[:, None] * sv_l + offs_d[None, :] * sv_d,
                     mask=n_mask[:, None] & d_mask[None, :], other=0.0)             # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new
    return acc / l_i[:, None]


def heads_last_output(q):
    """An output for attention over q [N, H, L, dh]: [N, L, H, dh] memory viewed as [N, H, L, dh], so
    the caller's merge of the heads back into [N, L, H * dh] is a free view, not a copy."""
    n, h, seq, dh = q.shape
    return q.new_empty(n, seq, h, dh).transpose(1, 2)
