"""Layer norm and residual-add + layer norm (kernels/layer_norm.py) against PyTorch.

    python benchmarks/bench_layer_norm.py [--videos 8] [--frames 8] [--dtypes fp16 bf16 fp32]

Rows = videos x frames x tokens of the B/32, B/16, L/14 vision towers, D = their width:
- "torch layer_norm" vs "triton layer_norm";
- "torch add + layer_norm" (the block's `x = x + attn`, then ln_2) vs "triton add_layer_norm".
GB/s counts the bytes each must move (read x [and delta], write y [and the sum]). Memory-bound:
the fused add saves one read of the sum. Needs a CUDA GPU; prints why and exits 0 without one.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402


def main(argv=None):
    args = kb.parse_args(__doc__, argv)
    if not kb.ready("bench_layer_norm", args):
        return 0
    from xclip_engine.kernels.layer_norm import add_layer_norm, layer_norm

    dev = kb.device(args)
    rows = []
    for model, s in kb.models(args).items():
        d = s["width"]
        m = args.videos * args.frames * s["tokens"]
        for name in args.dtypes:
            dt = kb.DTYPES[name]
            g = torch.Generator().manual_seed(0)
            x32, delta32 = torch.randn(m, d, generator=g).to(dev), torch.randn(m, d, generator=g).to(dev)
            w32, b32 = 1 + 0.1 * torch.randn(d, generator=g).to(dev), 0.1 * torch.randn(d, generator=g).to(dev)
            x, delta, w, b = (t.to(dt) for t in (x32, delta32, w32, b32))
            size = m * d * x.element_size()
            plain = {"torch layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
                     "triton layer_norm": lambda: layer_norm(x, w, b, 1e-5)}
            fused = {"torch add + layer_norm": lambda: F.layer_norm(x + delta, (d,), w, b, 1e-5),
                     "triton add_layer_norm": lambda: add_layer_norm(x, delta, w, b, 1e-5)[1]}
            for cands, ref, nbytes in [(plain, F.layer_norm(x.float(), (d,), w.float(), b.float(), 1e-5), 2 * size),
                                       (fused, F.layer_norm((x + delta).float(), (d,), w.float(), b.float(), 1e-5),
                                        4 * size)]:
                for row in kb.measure(cands, ref, args, nbytes / 1e9, "GB/s"):
                    rows.append({"model": model, "shape": f"M={m} D={d}", "dtype": name, **row})
                    print(rows[-1], flush=True)
    kb.report("bench_layer_norm", rows, "GB/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
