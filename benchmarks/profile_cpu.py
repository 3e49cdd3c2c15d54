"""Where the time of one X-CLIP forward goes on this CPU: torch.profiler's table of operators.

    python benchmarks/profile_cpu.py                      # B/32, 8 frames, batch 8, fp32 and bf16
    python benchmarks/profile_cpu.py --precision bf16 --batch 1

Random weights (time does not depend on them) and K = 400 random unit text features (cached text,
as every rung of the ladder but transformers' own forward). Prints the operators by self time and
the share of matmul-class operators (the part a faster kernel cannot shrink below the machine's
matmul rate), and writes benchmarks/results/profile_cpu_<precision>_b<batch>.txt.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import xclip_engine as xe

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::convolution",
              "aten::mkldnn_convolution", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::baddbmm", "aten::einsum")


def profile_forward(model_name: str, precision: str, batch: int, labels: int) -> tuple[str, float]:
    m = xe.load(model_name, random_init=True, device="cpu", precision=precision)
    c = m.config
    px = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size)
    text = torch.nn.functional.normalize(torch.randn(labels, c.embed_dim), dim=-1)
    with torch.inference_mode():
        m.logits(px, text)   # warm-up (oneDNN picks its kernels on the first call)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m.logits(px, text)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return events.table(sort_by="self_cpu_time_total", row_limit=15), matmul / max(total, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xclip-base-patch32")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--labels", type=int, default=400)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for precision in args.precision:
        table, share = profile_forward(args.model, precision, args.batch, args.labels)
        head = (f"{args.model}, {precision}, batch {args.batch}, K = {args.labels}, {torch.get_num_threads()} threads: "
                f"matmul-class operators take {share:.0%} of the operator self time")
        path = os.path.join(args.out, f"profile_cpu_{precision}_b{args.batch}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(head + "\n" + table + "\n")
        print(head + "\n" + table, flush=True)


if __name__ == "__main__":
    sys.exit(main())
