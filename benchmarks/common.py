"""Shared timing and reporting for the benchmarks: medians after warm-up, JSON + markdown."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch


def median_time(fn, warmup: int = 1, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, dtype=torch.float32, repeats: int = 5) -> float:
    """This machine's measured matmul throughput, the yardstick for model throughput."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_time(lambda: a @ b, warmup=2, repeats=repeats) / 1e9


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def write_report(name: str, rows: list[dict], columns: list[str], extra: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"machine": machine(), **extra, "rows": rows}, f, indent=2)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    table = "\n".join(lines)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    return table


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)
