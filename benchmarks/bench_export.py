"""ONNX export on CPU against what a user would otherwise run: X-CLIP B/32, 8 frames, random init.

    python benchmarks/bench_export.py [--batch 8] [--labels 400] [--repeats 3]

Same random weights everywhere (transformers builds them; xe.load and the export read the saved
folder). Each rung runs in a fresh process (peak memory per rung, no allocator carry-over), and the
whole ladder runs --rounds times in turn, so that load from other users of the machine falls on
every rung alike; a rung's time is the best of all its timings (interference only adds time), and
the median is reported beside it:
- transformers forward: XCLIPModel(input_ids, pixel_values), fp32 eager, text encoder inside every call;
- transformers video tower, eager, and a plain torch.onnx.export of it in ONNX Runtime (defaults);
- ours: the exported video graph alone (encode_video) and the ONNX Runtime backend's logits with the
  K label features computed once and cached (as Model.classify does), fp32 and int8.
Targets: ORT fp32 logits >= 1.8x transformers forward; our video graph >= the plain
export of transformers' tower; int8 >= 1.5x ORT fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import matmul_gflops, median_time, ort_gemm_gflops, write_report  # noqa: E402

GFLOP_PER_VIDEO = 71.0   # X-CLIP B/32 8 frames video tower (docs/machines.md §8)
# our video graph at K = 400 (tower, prompt generator, logits): torch's flop counter, benchmarks/ladder.py
OURS_GFLOP_PER_VIDEO_K400 = 75.8
RUNGS = ["hf_forward", "hf_video_torch", "hf_video_ort", "ours_video_graph", "ort_fp32_logits", "ort_int8_logits"]


class _HFVideoTower(torch.nn.Module):
    """transformers' get_video_features as a module, for a plain torch.onnx.export."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values):
        out = self.hf.get_video_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out)


def _hf(work):
    from transformers import XCLIPModel

    return XCLIPModel.from_pretrained(os.path.join(work, "hf")).eval()


def _inputs(args):
    g = torch.Generator().manual_seed(0)
    return torch.randn(args.batch, 8, 3, 224, 224, generator=g)


def _labels(args):
    import xclip_engine as xe

    return xe.load_labels("k400")[: args.labels]


def _peak_rss_mib() -> float:
    # VmHWM belongs to this process image (reset at exec); getrusage's ru_maxrss would include the
    # parent's peak at fork time
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timings(fn, repeats: int) -> list[float]:
    import time

    fn()   # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_rung(args) -> dict:
    """One rung in this process: seconds per call at batch `args.batch` (a list, one per repeat)."""
    px, labels, work, rung = _inputs(args), _labels(args), args.work, args.rung
    extra = {}
    with torch.inference_mode():
        if rung.startswith("hf_"):
            hf = _hf(work)
            if rung == "hf_forward":
                from transformers import CLIPTokenizer

                tok = CLIPTokenizer(os.path.join(work, "onnx", "vocab.json"), os.path.join(work, "onnx", "merges.txt"))
                ids = tok(labels, padding=True, return_tensors="pt").input_ids   # padded to the longest label
                fn = lambda: hf(input_ids=ids, pixel_values=px)
            elif rung == "hf_video_torch":
                fn = lambda: hf.get_video_features(pixel_values=px)
            else:
                import onnxruntime as ort

                sess = ort.InferenceSession(os.path.join(work, "hf_video.onnx"), providers=["CPUExecutionProvider"])
                feeds = {sess.get_inputs()[0].name: px.numpy()}
                fn = lambda: sess.run(None, feeds)
        else:
            from xclip_engine.export.runtime import load_runtime

            precision = "int8" if rung == "ort_int8_logits" else "fp32"
            model = load_runtime(os.path.join(work, "onnx"), "onnxruntime", "cpu", precision=precision)
            if rung == "ours_video_graph":
                fn = lambda: model.encode_video(px)
            else:
                text_s = min(_timings(lambda: model.net.encode_text(model.tokenizer(labels)), 1))
                text = model.encode_text(labels)      # once per label set, then cached
                extra["text_seconds"] = text_s
                fn = lambda: model.logits(px, text)
        seconds = _timings(fn, args.repeats)
    return {"rung": rung, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "load_avg": os.getloadavg()[0],
            **extra}


def prepare(work: str, args) -> None:
    """The shared inputs of all rungs: the transformers folder, our export, the plain export of HF's tower."""
    from transformers import XCLIPConfig, XCLIPModel

    from xclip_engine.export.onnx_export import export_model

    torch.manual_seed(0)
    hf = XCLIPModel(XCLIPConfig()).eval()
    hf.save_pretrained(os.path.join(work, "hf"))
    print("exporting ours (fp32 + int8) ...", flush=True)
    export_model(os.path.join(work, "hf"), os.path.join(work, "onnx"), int8=True, check=False)
    print("plain torch.onnx.export of transformers' video tower ...", flush=True)
    px = torch.randn(2, 8, 3, 224, 224)
    prog = torch.onnx.export(_HFVideoTower(hf).eval(), (px,), input_names=["pixel_values"], dynamo=True,
                             dynamic_shapes={"pixel_values": {0: torch.export.Dim("B", min=1)}}, verbose=False)
    prog.save(os.path.join(work, "hf_video.onnx"))
    from xclip_engine.export.runtime import load_runtime

    for precision in ("fp32", "int8"):   # the first load fuses and caches; rungs time cached loads
        load_runtime(os.path.join(work, "onnx"), "onnxruntime", "cpu", precision=precision)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--labels", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per rung and round, after a warm-up")
    p.add_argument("--rounds", type=int, default=2, help="times the whole ladder runs, in turn")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default=None, help="reuse a folder prepared by an earlier run")
    p.add_argument("--rung", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rung:
        print(json.dumps(run_rung(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        if not os.path.isdir(os.path.join(work, "onnx")):
            prepare(work, args)
        gflops = matmul_gflops()
        # the MLP's first GEMM at batch 8 (8 videos x 8 frames x 50 tokens), in ONNX Runtime and torch:
        # ORT's kernel rate bounds every ORT fp32 rung, torch's bounds transformers' forward
        m, k, n = args.batch * 8 * 50, 768, 3072
        a, w = torch.randn(m, k), torch.randn(k, n)
        mlp_torch = 2 * m * k * n / median_time(lambda: a @ w, warmup=2) / 1e9
        mlp_ort = ort_gemm_gflops(m, k, n)
        print(f"matmul fp32: {gflops:.0f} GFLOP/s on {torch.get_num_threads()} threads; the MLP GEMM "
              f"[{m}, {k}] x [{k}, {n}]: torch {mlp_torch:.0f}, ONNX Runtime {mlp_ort:.0f} GFLOP/s", flush=True)
        runs = {rung: [] for rung in RUNGS}
        for _ in range(args.rounds):
            for rung in RUNGS:
                cmd = [sys.executable, os.path.abspath(__file__), "--rung", rung, "--work", work, "--batch",
                       str(args.batch), "--labels", str(args.labels), "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[rung].append(json.loads(out.strip().splitlines()[-1]))
                print(runs[rung][-1], flush=True)

    b = args.batch
    rows, best = [], {}
    for rung in RUNGS:
        times = [t for r in runs[rung] for t in r["seconds"]]
        best[rung] = min(times)
        rows.append({"path": rung, "videos/s": b / best[rung], "s/video": best[rung] / b,
                     "median s/video": statistics.median(times) / b,
                     "% of matmul": 100 * GFLOP_PER_VIDEO * b / best[rung] / gflops,
                     "peak RSS MiB": max(r["peak_rss_mib"] for r in runs[rung]),
                     "load avg": max(r["load_avg"] for r in runs[rung])})
    speed = {rung: b / best[rung] for rung in RUNGS}
    targets = {
        "ort_fp32_logits / hf_forward (>= 1.8)": speed["ort_fp32_logits"] / speed["hf_forward"],
        "ours_video_graph / hf_video_ort (>= 1.0)": speed["ours_video_graph"] / speed["hf_video_ort"],
        "ort_int8_logits / ort_fp32_logits (>= 1.5)": speed["ort_int8_logits"] / speed["ort_fp32_logits"],
    }
    cols = ["path", "videos/s", "s/video", "median s/video", "% of matmul", "peak RSS MiB", "load avg"]
    extra = {"batch": b, "labels": args.labels, "rounds": args.rounds, "matmul_gflops_fp32": gflops,
             "mlp_gemm_gflops": {"shape": [m, k, n], "torch": mlp_torch, "onnxruntime": mlp_ort},
             "ratios": targets, "runs": runs,
             "text_seconds_once": {r: min(x["text_seconds"] for x in runs[r]) for r in RUNGS if "logits" in r}}
    print(write_report("bench_export", rows, cols, extra, args.out))
    for k, v in targets.items():
        print(f"{k}: {v:.2f}")
    if args.labels == 400:
        # the most the ORT fp32 rung could reach: all of its FLOPs at ORT's own GEMM rate
        ceiling = mlp_ort / OURS_GFLOP_PER_VIDEO_K400 / speed["hf_forward"]
        print(f"ceiling of ort_fp32_logits / hf_forward at ONNX Runtime's GEMM rate ({mlp_ort:.0f} GFLOP/s, "
              f"{OURS_GFLOP_PER_VIDEO_K400} GFLOP per video): {ceiling:.2f}")


if __name__ == "__main__":
    main()
