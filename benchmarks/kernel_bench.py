"""Shared set-up of the Triton kernel benchmarks (bench_<kernel>.py): GPU check, timing, model shapes, report.

Timings on a GPU are triton.testing.do_bench medians (CUDA events, L2 flushed between runs) in ms.
`--smoke` runs a benchmark's code path on the CPU under TRITON_INTERPRET=1 with tiny shapes, so a
machine without a GPU can check that the script works; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_report  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# Vision shapes of the released models (docs/model-xclip.md §11): width, heads, tokens per frame (with
# the class token), embed dim E and its heads (MIT / prompt generator), visual tokens N per video.
MODELS = {
    "B/32": dict(width=768, heads=12, tokens=50, embed=512, embed_heads=8, patches=49),
    "B/16": dict(width=768, heads=12, tokens=197, embed=512, embed_heads=8, patches=196),
    "L/14": dict(width=1024, heads=16, tokens=257, embed=768, embed_heads=12, patches=256),
}
SMOKE_MODELS = {"smoke": dict(width=64, heads=2, tokens=17, embed=64, embed_heads=2, patches=16)}


def parse_args(doc: str, argv=None, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--videos", type=int, default=8, help="videos per batch")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true",
                   help="CPU + TRITON_INTERPRET=1, tiny shapes: checks the script runs, measures nothing")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"          # before any kernel module is imported
        args.videos, args.frames, args.dtypes = 1, 2, [d for d in args.dtypes if d != "bf16"]
        args.out = os.path.join(tempfile.gettempdir(), "xclip-bench-smoke")   # keep results/ for real runs
    return args


def ready(name: str, args) -> bool:
    """False (after saying why) where this benchmark cannot measure anything: the script then exits 0."""
    if args.smoke:
        return True
    if not torch.cuda.is_available():
        print(f"{name}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured. "
              f"Run it on a GPU machine, or with --smoke to check the script under Triton's CPU interpreter.")
        return False
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(f"{name}: TRITON_INTERPRET is set, so the kernels would run in the CPU interpreter; unset it.")
        return False
    return True


def device(args) -> str:
    return "cpu" if args.smoke else "cuda"


def models(args) -> dict:
    return SMOKE_MODELS if args.smoke else MODELS


def time_ms(fn, args) -> float:
    """Median ms per call of fn (do_bench on a GPU; one timed call in a smoke run)."""
    if args.smoke:
        fn()
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def peak_mib(fn, args) -> float:
    """Peak GPU memory of one call above what was allocated before it, MiB (0 in a smoke run)."""
    if args.smoke:
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def max_err(out, ref32) -> float:
    return float((out.float() - ref32.float()).abs().max())


def machine_note(args) -> dict:
    if args.smoke:
        return {"device": "cpu (smoke run under TRITON_INTERPRET=1: timings are meaningless)"}
    import triton

    return {"device": torch.cuda.get_device_name(), "triton": triton.__version__,
            "cuda": torch.version.cuda}


def measure(candidates: dict, ref32, args, amount: float, unit: str) -> list[dict]:
    """Time each candidate fn (the first is the baseline); `amount` per call in `unit` x seconds
    (TFLOP for "TFLOP/s", GB for "GB/s")."""
    rows, base = [], None
    for label, fn in candidates.items():
        with torch.inference_mode():
            ms = time_ms(fn, args)
            out = fn()
            row = {"path": label, "ms": ms, unit: amount / (ms / 1e3), "peak MiB": peak_mib(fn, args),
                   "max err vs fp32": max_err(out[0] if isinstance(out, tuple) else out, ref32)}
        base = base or ms
        row["speedup"] = base / ms
        rows.append(row)
    return rows


def report(name: str, rows: list[dict], unit: str, args) -> None:
    cols = ["model", "shape", "dtype", "path", "ms", unit, "speedup", "peak MiB", "max err vs fp32"]
    print(write_report(name, rows, cols, machine_note(args), args.out))
    print(f"written: {os.path.join(args.out, name)}.json and .md")
