"""The performance ladder: every way to run X-CLIP here, from transformers' eager model up.

    python benchmarks/ladder.py            # B/32 and B/16 8 frames, batch 1 and 8, K = 400, every rung
    python benchmarks/ladder.py --quick    # B/32 only, batch 8 and 1, 1 timed call, no torch.compile (< 5 min
                                           # once the first run has prepared the models)
    python benchmarks/ladder.py --growth   # how cost grows with T, B and K (benchmarks/ladder_growth.py)

Same random weights on every rung (transformers builds them; xe.load and the export read the saved
folder), the same videos and the same K labels. Each rung runs in a fresh process (peak memory is
that process's, nothing carries over) and its warm-up call is not timed; videos/s is from the best
call (interference from other users of the machine only adds time), p50/p90 from all of them.
FLOPs are counted by torch.utils.flop_counter (ladder_rungs.count_flops), the machine's matmul
rate is a 2048^3 matmul in fp32 and bf16 measured in the same run, and every rung's logits are
compared with our fp32 reference on the same videos (max error as % of the logit range, top-1
agreement). Writes benchmarks/results/ladder.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_export import _HFVideoTower  # noqa: E402
from common import machine, matmul_gflops  # noqa: E402
from ladder_report import summarize, targets, write_all  # noqa: E402
from ladder_rungs import COMPILE_RUNGS, NNCF_FILE, ONNX_RUNGS, RUNGS, run_rung  # noqa: E402

# transformers XCLIPConfig keyword arguments of each model (its defaults are B/32, 8 frames)
MODELS = {
    "B/32": {},
    "B/16": {"vision_config": {"patch_size": 16}},
    # --smoke: every rung in seconds, to check the machinery, not to measure anything
    "tiny": {"text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                             "num_attention_heads": 2},
             "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "num_frames": 4,
                               "mit_hidden_size": 64, "mit_intermediate_size": 256, "mit_num_attention_heads": 2},
             "projection_dim": 64, "prompt_num_attention_heads": 2},
}


def label_names(k: int) -> list[str]:
    """K Kinetics-400 class names; beyond 400, numbered variants (different texts, same lengths)."""
    import xclip_engine as xe

    base = xe.load_labels("k400")
    return [base[i % len(base)] + ("" if i < len(base) else f" {i // len(base)}") for i in range(k)]


def _gpu_with_tensorrt() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def prepare(work: str, model: str, batches, k: int, echo=print, export: bool = True) -> None:
    """The shared inputs of all rungs: weights, labels, videos, our export and the plain export of HF's tower."""
    from transformers import XCLIPConfig, XCLIPModel

    from xclip_engine.export.onnx_export import export_model
    from xclip_engine.export.runtime import load_runtime

    torch.manual_seed(0)
    hf = realistic_init(XCLIPModel(XCLIPConfig(**MODELS[model])).eval())
    hf.save_pretrained(os.path.join(work, "hf"))
    with open(os.path.join(work, "labels.json"), "w") as f:
        json.dump(label_names(k), f)
    vc = hf.config.vision_config
    g = torch.Generator().manual_seed(0)
    for b in batches:
        px = torch.randn(b, vc.num_frames, 3, vc.image_size, vc.image_size, generator=g)
        np.save(os.path.join(work, f"pixels_b{b}.npy"), px.numpy())
    if not export:
        return
    echo(f"{model}: exporting ours (fp32 + static int8) ...")
    quiet = (lambda *a, **kw: None)
    # int8 is calibrated on clips like the ones it will see (as a user's --calibrate DIR would be): here
    # 8 more seeded normal videos, the ladder's own distribution, none of them a timed input
    calibration = torch.randn(8, vc.num_frames, 3, vc.image_size, vc.image_size, generator=g)
    export_model(os.path.join(work, "hf"), os.path.join(work, "onnx"), int8=True, calibrate=calibration,
                 tensorrt=_gpu_with_tensorrt(), echo=quiet)   # checked: backend auto takes only checked paths
    prepare_nncf(work, calibration, echo)
    echo(f"{model}: plain torch.onnx.export of transformers' video tower ...")
    px = torch.randn(2, vc.num_frames, 3, vc.image_size, vc.image_size)
    prog = torch.onnx.export(_HFVideoTower(hf).eval(), (px,), input_names=["pixel_values"], dynamo=True,
                             dynamic_shapes={"pixel_values": {0: torch.export.Dim("B", min=1)}}, verbose=False)
    prog.save(os.path.join(work, "hf_video.onnx"))
    for precision in ("fp32", "int8"):   # the first load fuses and caches; rungs time cached loads
        # (OpenVINO's compiled-model cache fills on the openvino rungs' warm-up calls, which are not timed)
        load_runtime(os.path.join(work, "onnx"), "onnxruntime", "cpu", precision=precision)


def realistic_init(hf):
    """Weights of realistic spread (1/sqrt(fan-in), as trained CLIP weights have) in place of
    transformers' std 0.02, whose near-flat logits make top-1 agreement a coin toss; returns hf."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 2 and "embedding" not in name:
                p.normal_(std=p.shape[1] ** -0.5)
        hf.logit_scale.fill_(4.0)
    return hf


def prepare_nncf(work: str, calibration: torch.Tensor, echo=print) -> None:
    """OpenVINO's own int8 of our fp32 video graph (the openvino_nncf_int8 peer), by NNCF's post-training
    quantization (transformer preset) on the same calibration videos and labels as ours."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino") is None:
        echo("nncf or openvino is not installed: the openvino_nncf_int8 rung will be skipped")
        return
    import nncf
    import openvino as ov

    import xclip_engine as xe
    from xclip_engine.export.calibration import video_feeds

    echo("quantizing our fp32 video graph with NNCF (the OpenVINO int8 peer) ...")
    m = xe.load(os.path.join(work, "hf"))
    with open(os.path.join(work, "labels.json")) as f:
        feeds = video_feeds(m.net, calibration, json.load(f))
    core = ov.Core()
    quantized = nncf.quantize(core.read_model(os.path.join(work, "onnx", "video.fp32.onnx")), nncf.Dataset(feeds),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    ov.save_model(quantized, os.path.join(work, NNCF_FILE))


def _rung_in_subprocess(rung, work, batches, repeats) -> dict:
    """{batch: record} for `rung` at each of `batches`, in one fresh process (smallest batch first, so
    each record's peak RSS is that batch's or, for the larger batch, the larger of the two)."""
    batches = sorted(batches)
    cmd = [sys.executable, os.path.abspath(__file__), "--rung", rung, "--work", work,
           "--batch", *map(str, batches), "--repeats", str(repeats)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    records = [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]
    if r.returncode != 0 or len(records) != len(batches):
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return {b: {"rung": rung, "batch": b, "skipped": f"failed (exit {r.returncode}): {' / '.join(tail)}"}
                for b in batches}
    return {rec["batch"]: rec for rec in records}


def run_ladder(args) -> dict:
    models = ["tiny"] if args.smoke else ["B/32"] if args.quick else args.models
    batches = args.batches or ([2] if args.smoke else [8, 1])
    # quick: one timed call per rung after the warm-up (the full ladder takes 3 x 2 rounds)
    repeats = args.repeats or (1 if (args.smoke or args.quick) else 3)
    rounds = args.rounds or (1 if (args.smoke or args.quick) else 2)
    leave_out = {r: "left out of --smoke/--quick: torch.compile compiles each shape for minutes here; "
                 "run the full ladder" for r in COMPILE_RUNGS} if (args.smoke or args.quick) else {}
    # quick: one process per rung for both batches (process start-up and model loading were half a
    # quick run); the full ladder gives every (rung, batch) a process of its own
    def run_all(rung, w, bs, n):
        if args.in_process or args.smoke:
            return {b: run_rung(rung, w, b, n) for b in bs}
        if args.quick:
            return _rung_in_subprocess(rung, w, bs, n)
        return {b: _rung_in_subprocess(rung, w, [b], n)[b] for b in bs}
    echo = (lambda *a: None) if args.json_only else (lambda *a: print(*a, flush=True))

    # ours_fp32 first: every other rung's logits are compared with its
    rungs = ["ours_fp32"] + [r for r in RUNGS if r != "ours_fp32" and (not args.rungs or r in args.rungs)]
    n = 512 if args.smoke else 2048
    mm = {"fp32": matmul_gflops(n, torch.float32), "bf16": matmul_gflops(n, torch.bfloat16)}
    echo(f"matmul {n}^3: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s, "
         f"{torch.get_num_threads()} threads")
    records = []
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            work = os.path.join(args.work, model.replace("/", "")) if args.work else tmp
            no_gpu = set() if torch.cuda.is_available() else {"tensorrt_fp16"}   # it skips without exports
            export = bool(set(rungs) & (ONNX_RUNGS - no_gpu))
            if not os.path.isfile(os.path.join(work, "hf_video.onnx" if export else "labels.json")):
                os.makedirs(work, exist_ok=True)
                prepare(work, model, batches, args.labels, echo, export=export)
            # per batch: transformers' forward encodes the K labels once per call, so its per-video work
            # depends on the batch
            flops = run_all("flops", work, batches, 1)
            echo(f"{model}: {json.dumps(flops)}")
            for _ in range(rounds):
                for rung in rungs:   # ours_fp32 first: its logits are the reference at every batch
                    got = ({b: {"rung": rung, "batch": b, "skipped": leave_out[rung]} for b in batches}
                           if rung in leave_out else run_all(rung, work, batches, repeats))
                    for b in batches:
                        rec = got[b]
                        rec.update(model=model, flops=flops[b])
                        if "logits_file" in rec:   # compared now: the work folder goes away
                            ref = os.path.join(work, "logits", f"ours_fp32_b{b}.npy")
                            rec.update(_compare(rec["logits_file"], ref))
                        records.append(rec)
                        echo(_one_line(rec))
    # the table lists batch by batch, rungs in ladder order
    records.sort(key=lambda r: (models.index(r["model"]), batches.index(r["batch"]), rungs.index(r["rung"])))
    return {"matmul_gflops": mm, "matmul_n": n, "records": records, "repeats": repeats, "rounds": rounds,
            "labels": args.labels, "mode": "smoke" if args.smoke else "quick" if args.quick else "full"}


def _compare(path, ref_path) -> dict:
    a, r = np.load(path).astype(np.float64), np.load(ref_path).astype(np.float64)
    span = float(r.max() - r.min()) or 1.0
    return {"max_logit_error_pct": 100 * float(np.abs(a - r).max()) / span,
            "top1_agreement": float((a.argmax(-1) == r.argmax(-1)).mean())}


def _one_line(rec) -> str:
    if "skipped" in rec:
        return f"  {rec['model']} b{rec['batch']} {rec['rung']}: skipped ({rec['skipped']})"
    best = min(rec["seconds"])
    return (f"  {rec['model']} b{rec['batch']} {rec['rung']}: {rec['batch'] / best:.2f} videos/s, "
            f"peak {rec['peak_rss_mib']:.0f} MiB, load avg {rec['load_avg']:.1f}")


def describe_machine() -> dict:
    from xclip_engine.engine.runtime.bf16 import has_amx_bf16

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {**machine(), "cpu_model": cpu, "cores": os.cpu_count(), "amx_bf16": has_amx_bf16()[1],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_start": os.getloadavg()[0]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="B/32 only, batch 8 and 1, 1 timed call per rung, no "
                   "torch.compile; keeps the prepared models in OUT/ladder_work (the first run exports them once)")
    p.add_argument("--growth", action="store_true", help="the cost-growth table (T, B, K) instead of the ladder")
    p.add_argument("--models", nargs="+", default=["B/32", "B/16"], choices=["B/32", "B/16"])
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default: 8 1")
    p.add_argument("--rungs", nargs="+", default=None, choices=sorted(RUNGS),
                   help="run only these (ours_fp32 always runs: the others are compared with it)")
    p.add_argument("--labels", type=int, default=None, help="K labels, default 400 (text features cached by our "
                   "rungs)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per rung and round (after a warm-up)")
    p.add_argument("--rounds", type=int, default=None, help="times the whole ladder runs, in turn")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default=None, help="keep (and reuse) the prepared folders here")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)       # tiny model, every rung, seconds
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # rungs in this process
    p.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rung", default=None, help=argparse.SUPPRESS)               # one rung: what a child runs
    p.add_argument("--batch", type=int, nargs="+", default=[8], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rung:
        for b in args.batch:   # one JSON line per batch
            print(json.dumps(run_rung(args.rung, args.work, b, args.repeats or 2)), flush=True)
        return
    if args.growth:
        from ladder_growth import main as growth_main

        return growth_main(args)
    if args.labels is None:
        args.labels = 10 if args.smoke else 400
    if args.quick and args.work is None:   # preparing B/32 (save, three ONNX exports) is most of a first run
        args.work = os.path.join(args.out, "ladder_work")
    if min(args.batches or [1]) < 1 or args.labels < 1:
        p.error("--batches and --labels must be at least 1")
    result = run_ladder(args)
    result["machine"] = describe_machine()
    rows = summarize(result)
    result["targets"] = targets(rows)
    table = write_all("ladder", result, rows, args.out, echo=None if args.json_only else print)
    if not args.json_only:
        print(table)
        for t in result["targets"]:
            print(f"target {t['what']}: {t['value']} ({'met' if t['met'] else 'NOT met'})")
    return result


if __name__ == "__main__":
    main()
