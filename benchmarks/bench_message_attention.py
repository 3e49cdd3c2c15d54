"""Fused cross-frame message attention (kernels/message_attention.py) against the eager paths.

    python benchmarks/bench_message_attention.py [--videos 8] [--dtypes fp16 bf16 fp32]

msg [videos, T, D] (message_fc output) -> msg + attn(message_ln(msg)), T = 8, 16, 32 frames, for the
B (D 768, 12 heads) and L (D 1024, 16 heads) widths:
- "eager": transformers' layout (layer norm, q/k/v linear, matmul-softmax-matmul, out linear, add);
- "reference op": ReferenceOps.message_attention (the model's modules, SDPA);
- "triton fused": one Triton kernel + the output GEMM with the residual in its epilogue.
TFLOP/s counts B*T*(8 D^2) + 4*B*T^2*D. Needs a CUDA GPU; prints why and exits 0 without one.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402
from bench_frame_attention import eager as eager_attention  # noqa: E402


def eager(msg, ln, attn):
    b, t, d = msg.shape
    h = attn.heads
    q, k, v = attn.qkv(F.layer_norm(msg, (d,), ln.weight, ln.bias, ln.eps)).chunk(3, dim=-1)
    q, k, v = (x.view(b, t, h, d // h).transpose(1, 2) for x in (q, k, v))
    return msg + attn.out(eager_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


def weights(ln, attn):
    """The op's arguments after msg: the modules' parameters, as CrossFrameBlock passes them."""
    return (ln.weight, ln.bias, ln.eps, attn.qkv.weight, attn.qkv.bias, attn.out.weight, attn.out.bias, attn.heads)


def main(argv=None):
    args = kb.parse_args(__doc__, argv)
    if not kb.ready("bench_message_attention", args):
        return 0
    from xclip_engine.engine.model.layers import LayerNorm, SelfAttention
    from xclip_engine.engine.model.ops import REFERENCE
    from xclip_engine.kernels.message_attention import message_attention

    dev = kb.device(args)
    frames = [args.frames] if args.smoke else [8, 16, 32]
    widths = {"smoke": (64, 2)} if args.smoke else {"B (768)": (768, 12), "L (1024)": (1024, 16)}
    rows = []
    for model, (d, h) in widths.items():
        for t in frames:
            for name in args.dtypes:
                torch.manual_seed(0)
                ln32, attn32 = LayerNorm(d, eps=1e-5).to(dev), SelfAttention(d, h).to(dev)
                msg32 = torch.randn(args.videos, t, d, device=dev)
                dt = kb.DTYPES[name]
                ln, attn, msg = LayerNorm(d, eps=1e-5).to(dev, dt), SelfAttention(d, h).to(dev, dt), msg32.to(dt)
                ln.load_state_dict(ln32.state_dict())      # same weights, rounded to dt
                attn.load_state_dict(attn32.state_dict())
                w = weights(ln, attn)
                candidates = {
                    "eager": lambda: eager(msg, ln, attn),
                    "reference op": lambda: REFERENCE.message_attention(msg, *w),
                    "triton fused": lambda: message_attention(msg, *w),
                }
                with torch.inference_mode():
                    ref32 = REFERENCE.message_attention(msg32, *weights(ln32, attn32))
                flop = args.videos * t * 8 * d * d + 4 * args.videos * t * t * d
                for row in kb.measure(candidates, ref32, args, flop / 1e12, "TFLOP/s"):
                    rows.append({"model": model, "shape": f"B={args.videos} T={t} H={h}", "dtype": name, **row})
                    print(rows[-1], flush=True)
    kb.report("bench_message_attention", rows, "TFLOP/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
