"""Bias + QuickGELU (kernels/quick_gelu.py) against PyTorch, alone and inside the whole MLP.

    python benchmarks/bench_quick_gelu.py [--videos 8] [--frames 8] [--dtypes fp16 bf16 fp32]

Hidden [videos x frames x tokens, 4D] of the B/32, B/16, L/14 vision towers:
- activation: "torch (add, scale, sigmoid, mul)" vs "triton bias_quick_gelu" (GB/s: read h, write g);
- MLP: "torch mlp" (ReferenceOps.mlp: Linear with bias, QuickGELU, Linear) vs "triton mlp"
  (Linear without bias, the fused kernel, Linear), GB/s column left as the activation's bytes.
Needs a CUDA GPU; prints why and exits 0 without one.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_bench as kb  # noqa: E402


def eager_activation(h, bias):
    """The eager baseline of the kernel alone: bias add, scale, sigmoid, multiply (four passes)."""
    z = h + bias
    return z * torch.sigmoid(1.702 * z)


def main(argv=None):
    args = kb.parse_args(__doc__, argv)
    if not kb.ready("bench_quick_gelu", args):
        return 0
    from xclip_engine.engine.model.layers import MLP
    from xclip_engine.engine.model.ops import REFERENCE
    from xclip_engine.kernels.quick_gelu import bias_quick_gelu_op, mlp

    dev = kb.device(args)
    rows = []
    for model, s in kb.models(args).items():
        d = s["width"]
        m = args.videos * args.frames * s["tokens"]
        for name in args.dtypes:
            dt = kb.DTYPES[name]
            torch.manual_seed(0)
            net32 = MLP(d, 4 * d).to(dev)
            net = MLP(d, 4 * d).to(dev, dt)
            net.load_state_dict(net32.state_dict())
            x = torch.randn(m, d, device=dev).to(dt)
            h = torch.nn.functional.linear(x, net.fc1.weight)
            nbytes = 2 * h.numel() * h.element_size()
            w = (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias)
            act = {"torch (add, scale, sigmoid, mul)": lambda: eager_activation(h, net.fc1.bias),
                   "triton bias_quick_gelu": lambda: bias_quick_gelu_op(h, net.fc1.bias)}
            whole = {"torch mlp": lambda: REFERENCE.mlp(x, *w),
                     "triton mlp": lambda: mlp(x, *w)}
            with torch.inference_mode():
                ref_act = eager_activation(h.float(), net.fc1.bias.float())
                ref_mlp = REFERENCE.mlp(x.float(), net32.fc1.weight, net32.fc1.bias, net32.fc2.weight, net32.fc2.bias)
            for what, cands, ref in [("activation", act, ref_act), ("mlp", whole, ref_mlp)]:
                for row in kb.measure(cands, ref, args, nbytes / 1e9, "GB/s"):
                    rows.append({"model": model, "shape": f"{what} M={m} N={4 * d}", "dtype": name, **row})
                    print(rows[-1], flush=True)
    kb.report("bench_quick_gelu", rows, "GB/s", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
