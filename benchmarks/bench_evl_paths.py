"""EVL's CPU paths in one run: the reference in fp32 and bf16, ONNX Runtime fp32 and int8.

    python benchmarks/bench_evl_paths.py [--model evl-b16-8f] [--batch 8] [--repeats 2] [--no-int8]

One random-init model (the registry architecture: B/16, 8 frames, 224 px, 400 classes), one seeded
batch of videos; each path is warmed up once and then timed `--repeats` times, and the best time is
reported (other work on the machine only ever adds time) with the median beside it. The ONNX
Runtime paths run the graphs `export_model` writes (no export check here: the tests do that), loaded
as `xe.load(DIR, backend="onnxruntime", precision=...)` loads them (fused and cached graphs).
Each path's logits are compared with the fp32 reference's (max |diff| over the logit range), so a
fast path that is wrong shows here too.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def timed(fn, px, repeats: int) -> tuple[float, float, torch.Tensor]:
    with torch.inference_mode():
        out = fn(px).float()                      # warm-up, and the output compared
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(px)
            times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="evl-b16-8f", help="an EVL registry name (random init)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 graph")
    args = ap.parse_args(argv)

    import xclip_engine as xe
    from xclip_engine.engine.checkpoint import load_model
    from xclip_engine.engine.runtime.bf16 import to_bf16
    from xclip_engine.export.onnx_export import export_model

    net = load_model(args.model, random_init=True).model.eval()
    c = net.config
    if c.family != "evl":
        raise SystemExit(f"{args.model} is not an EVL model")
    g = torch.Generator().manual_seed(0)
    px = torch.randn(args.batch, c.num_frames, 3, c.image_size, c.image_size, generator=g)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads", flush=True)
    print(f"{args.model}: {c.layers} layers x width {c.width}, {c.num_frames} frames, {c.image_size} px, "
          f"batch {args.batch}; best (median) of {args.repeats} timed forwards after one warm-up", flush=True)

    paths = {"reference fp32": net, "reference bf16": to_bf16(copy.deepcopy(net).eval())}
    with tempfile.TemporaryDirectory(prefix="bench-evl-") as folder:
        t0 = time.perf_counter()
        export_model(model=net, out=folder, int8=not args.no_int8, check=False, echo=lambda m: None)
        print(f"(export: {time.perf_counter() - t0:.0f} s)", flush=True)
        for precision in ("fp32",) + (() if args.no_int8 else ("int8",)):
            model = xe.load(folder, backend="onnxruntime", device="cpu", precision=precision)
            paths[f"onnxruntime {precision}"] = model.net
        rows, ref = [], None
        for name, fn in paths.items():
            best, median, out = timed(fn, px, args.repeats)
            ref = out if ref is None else ref
            diff = float((out - ref).abs().max() / (ref.max() - ref.min()))
            rows.append((name, best, median, diff))
            print(f"  {name:18s} {best:7.2f} s ({median:.2f})  {best / args.batch:6.3f} s/video  "
                  f"logits vs fp32 ref: {diff:.1e} of the range", flush=True)
    base = rows[0][1]
    print("speed-up over reference fp32: " + ", ".join(f"{n} {base / b:.2f}x" for n, b, _, _ in rows[1:]))


if __name__ == "__main__":
    sys.exit(main())
