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


def ort_gemm_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """ONNX Runtime's own fp32 GEMM rate (MLAS) on one Gemm node [m, k] x [k, n] with constant weights,
    as the MLP and projections of the exported graphs run: the ceiling of any ORT fp32 rung."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = torch.Generator().manual_seed(0)
    w, bias = torch.randn(n, k, generator=g).numpy(), torch.randn(n, generator=g).numpy()
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    # IR 9 / opset 17: what this ONNX Runtime reads whatever onnx version wrote the file
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = torch.randn(m, k, generator=g).numpy()
    return 2 * m * k * n / median_time(lambda: sess.run(None, {"x": x}), warmup=2, repeats=repeats) / 1e9


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
