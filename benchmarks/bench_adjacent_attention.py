"""EVL's adjacent-frame attention feature (kernels/adjacent_attention.py) against the PyTorch ways to compute it.

    python benchmarks/bench_adjacent_attention.py [--videos 8] [--frames 8] [--dtypes fp16 bf16 fp32]

For the B/16 and L/14 shapes (docs/model-evl.md §7, §11: g = 14 and 16, P = 196 and 256 patches,
C = 768 and 1024, H = 12 and 16, dh = 64), one call on videos x frames frames, q/k as head views of
one projection (as the backbone's taps hand them over), output [B, T, L, C]:
- "reference op": ReferenceOps.adjacent_frame_feature (A scattered into the (2g-1)² relative offsets,
  then one matmul with the table; the [P, P, C] gather is never formed);
- "gather + einsum": the official code's way, the table gathered to [P, P, C] by the index table
  and contracted with A (118 MB per table in fp32 at B/16);
- "triton fused": scores, softmax, head mean and the gathered contraction in one kernel.
TFLOP/s counts the useful work 2 * B * (T-1) * 2 * (H * P² * dh + P² * C) (scores and contraction,
both neighbours). Needs a CUDA GPU; prints why and exits 0 without one (--smoke checks the script on
the CPU interpreter with a tiny shape).
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402

EVL_MODELS = ("B/16", "L/14", "smoke")         # B/32 is not an EVL configuration


def gather_einsum(q, k, w_prev, w_next, grid):
    # the official formulation: W[idx] unrolled to [P, P, C], contracted with the head-mean attention
    from xclip_engine.engine.model.ops import relative_position_index

    b, t, seq, h, dh = q.shape
    qp = q[:, :, 1:].permute(0, 1, 3, 2, 4) * dh ** -0.5
    kp = k[:, :, 1:].permute(0, 1, 3, 2, 4)
    idx = relative_position_index(grid, q.device)
    out = q.new_zeros(b, t, seq, w_prev.shape[-1])

    def feature(qf, kf, w):
        a = torch.softmax(qf @ kf.transpose(-1, -2), dim=-1).mean(dim=2)          # [B, T-1, P, P]
        return torch.einsum("btpq,pqc->btpc", a, w[idx])

    out[:, 1:, 1:] += feature(qp[:, 1:], kp[:, :-1], w_prev)
    out[:, :-1, 1:] += feature(qp[:, :-1], kp[:, 1:], w_next)
    return out


def main(argv=None):
    args = kb.parse_args(__doc__, argv)
    if not kb.ready("bench_adjacent_attention", args):
        return 0
    from xclip_engine.engine.model.ops import REFERENCE
    from xclip_engine.kernels.adjacent_attention import adjacent_frame_feature

    dev, b, t = kb.device(args), args.videos, args.frames
    rows = []
    for model, s in kb.models(args).items():
        if model not in EVL_MODELS:
            continue
        d, h, p = s["width"], s["heads"], s["patches"]
        grid, dh, seq = math.isqrt(p), d // h, p + 1
        for name in args.dtypes:
            gen = torch.Generator().manual_seed(0)
            qk = torch.randn(b, t, seq, 2 * d, generator=gen).to(dev, kb.DTYPES[name])
            q, k = qk.view(b, t, seq, 2, h, dh).unbind(3)
            w_prev, w_next = (torch.randn((2 * grid - 1) ** 2, d, generator=gen).to(dev, kb.DTYPES[name])
                              for _ in range(2))
            inputs = (q, k, w_prev, w_next, grid)
            candidates = {
                "reference op": lambda: REFERENCE.adjacent_frame_feature(*inputs),
                "gather + einsum": lambda: gather_einsum(*inputs),
                "triton fused": lambda: adjacent_frame_feature(*inputs),
            }
            ref32 = REFERENCE.adjacent_frame_feature(*(x.float() for x in inputs[:4]), grid)
            flop = 2 * b * max(t - 1, 0) * 2 * (h * p * p * dh + p * p * d)
            for row in kb.measure(candidates, ref32, args, flop / 1e12, "TFLOP/s"):
                rows.append({"model": model, "shape": f"B={b} T={t} g={grid} H={h} C={d}", "dtype": name, **row})
                print(rows[-1], flush=True)
    kb.report("bench_adjacent_attention", rows, "TFLOP/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
