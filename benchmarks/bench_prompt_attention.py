"""Fused prompt-generator cross-attention (kernels/prompt_attention.py) against SDPA and eager attention.

    python benchmarks/bench_prompt_attention.py [--videos 8] [--labels 400] [--dtypes fp16 bf16 fp32]

K label queries over the N visual tokens of each video (N = 49, 196, 256 for B/32, B/16, L/14;
heads = E/64: 8 for B, 12 for L), as the two prompt layers run it for every (video, label) pair:
"sdpa (reference op)", "eager" (transformers' matmul, fp32 softmax, matmul), "triton fused".
TFLOP/s counts 4 * B * H * K * N * dh. Needs a CUDA GPU; prints why and exits 0 without one.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402
from bench_frame_attention import eager, heads, merge  # noqa: E402


def main(argv=None):
    args = kb.parse_args(__doc__, argv, extra=lambda p: p.add_argument("--labels", type=int, default=400))
    if not kb.ready("bench_prompt_attention", args):
        return 0
    from xclip_engine.engine.model.ops import REFERENCE
    from xclip_engine.kernels.prompt_attention import prompt_attention

    dev, b = kb.device(args), args.videos
    kq = 3 if args.smoke else args.labels
    rows = []
    for model, s in kb.models(args).items():
        e, h, n = s["embed"], s["embed_heads"], s["patches"]
        for name in args.dtypes:
            g = torch.Generator().manual_seed(0)
            q = heads(torch.randn(b, kq, e, generator=g).to(dev, kb.DTYPES[name]), h)
            k, v = (heads(t, h) for t in torch.randn(b, n, 2 * e, generator=g).to(dev, kb.DTYPES[name]).chunk(2, -1))
            candidates = {"sdpa (reference op)": lambda: merge(REFERENCE.prompt_attention(q, k, v)),
                          "eager": lambda: merge(eager(q, k, v)),
                          "triton fused": lambda: merge(prompt_attention(q, k, v))}
            ref32 = merge(REFERENCE.prompt_attention(q.float(), k.float(), v.float()))
            flop = 4 * b * h * kq * n * (e // h)
            for row in kb.measure(candidates, ref32, args, flop / 1e12, "TFLOP/s"):
                rows.append({"model": model, "shape": f"B={b} H={h} K={kq} N={n}", "dtype": name, **row})
                print(rows[-1], flush=True)
    kb.report("bench_prompt_attention", rows, "TFLOP/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
