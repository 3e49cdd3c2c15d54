"""Fused intra-frame attention (kernels/frame_attention.py) against what the model would otherwise run.

    python benchmarks/bench_frame_attention.py [--videos 8] [--frames 8] [--dtypes fp16 bf16 fp32]

For the B/32, B/16 and L/14 shapes (L = 50, 197, 257 tokens per frame, dh = 64), one call on
videos x frames frames, output merged to [BT, L, D] as the next layer takes it:
- "sdpa + cat/slice": the official layout, q/k/v of L+1 tokens (message token concatenated), SDPA,
  the message token's output sliced off;
- "eager + cat/slice": the same with transformers' eager attention (matmul, fp32 softmax, matmul);
- "reference op": ReferenceOps.frame_attention (k/v concatenated, no query for the message token);
- "triton fused". Target: triton >= 1.5x "sdpa + cat/slice" at fp16.
TFLOP/s counts the useful work 4 * BT * H * L * (L+1) * dh. Needs a CUDA GPU; prints why and exits 0
without one (--smoke checks the script on the CPU interpreter).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402


def merge(o):
    # [BT, H, L, dh] -> [BT, L, D], as the output projection takes it
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def heads(x, h):
    return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)


def eager(q, k, v):
    # transformers' eager_attention_forward: scores, softmax in fp32, weights back to the input dtype
    w = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), v)


def main(argv=None):
    args = kb.parse_args(__doc__, argv)
    if not kb.ready("bench_frame_attention", args):
        return 0
    from xclip_engine.engine.model.ops import REFERENCE
    from xclip_engine.kernels.frame_attention import frame_attention

    dev, bt = kb.device(args), args.videos * args.frames
    rows = []
    for model, s in kb.models(args).items():
        d, h, seq = s["width"], s["heads"], s["tokens"]
        for name in args.dtypes:
            g = torch.Generator().manual_seed(0)
            qkv = torch.randn(bt, seq, 3 * d, generator=g).to(dev, kb.DTYPES[name])
            qkv_msg = torch.randn(bt, 1, 3 * d, generator=g).to(dev, kb.DTYPES[name])
            q, k, v = (heads(t, h) for t in qkv.chunk(3, dim=-1))
            _, km, vm = (heads(t, h) for t in qkv_msg.chunk(3, dim=-1))

            def with_cat(attn):
                full = torch.cat([qkv, qkv_msg], dim=1)                       # [BT, L+1, 3D]
                qa, ka, va = (heads(t, h) for t in full.chunk(3, dim=-1))
                return merge(attn(qa, ka, va)[:, :, :seq])                    # drop the message token

            candidates = {
                "sdpa + cat/slice": lambda: with_cat(F.scaled_dot_product_attention),
                "eager + cat/slice": lambda: with_cat(eager),
                "reference op": lambda: merge(REFERENCE.frame_attention(q, k, v, km, vm)),
                "triton fused": lambda: merge(frame_attention(q, k, v, km, vm)),
            }
            ref32 = merge(REFERENCE.frame_attention(*(t.float() for t in (q, k, v, km, vm))))
            flop = 4 * bt * h * seq * (seq + 1) * (d // h)
            for row in kb.measure(candidates, ref32, args, flop / 1e12, "TFLOP/s"):
                rows.append({"model": model, "shape": f"BT={bt} H={h} L={seq}", "dtype": name, **row})
                print(rows[-1], flush=True)
    kb.report("bench_frame_attention", rows, "TFLOP/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
