"""How cost grows: videos/s and peak memory for T = 8, 16, 32 frames, batch 1, 8, 32 and
K = 10, 400, 4000 labels, on the path `xe.load(backend="auto")` takes here.

    python benchmarks/ladder.py --growth [--quick]

One axis at a time around X-CLIP B/32, T = 8, batch 8, K = 400 (the full 27-point grid would spend
most of its time on T = 32 x batch 32). Each point runs in a fresh process (peak memory is its own).
Weights are random (the cost does not depend on them) and the K text features are random unit
vectors: the text tower runs once per label set and is cached, so it is not part of the per-video
cost measured here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
from bench_export import _peak_rss_mib
from common import write_report

BASE = {"T": 8, "B": 8, "K": 400}
AXES = {"T": [8, 16, 32], "B": [1, 8, 32], "K": [10, 400, 4000]}
SMOKE_BASE, SMOKE_AXES = {"T": 4, "B": 2, "K": 10}, {"T": [4, 8], "B": [1, 2], "K": [10, 40]}


def points(smoke: bool = False) -> list[dict]:
    base, axes = (SMOKE_BASE, SMOKE_AXES) if smoke else (BASE, AXES)
    out = []
    for axis, values in axes.items():
        for v in values:
            p = {**base, axis: v}
            if p not in out:
                out.append(p)
    return out


def _model(t: int, smoke: bool):
    from xclip_engine.engine.api import Model
    from xclip_engine.engine.runtime.cpu_memory import keep_freed_memory

    keep_freed_memory()   # as the CLI runs our models (xe.load and Model leave malloc alone)
    from xclip_engine.engine.config import get_config
    from xclip_engine.engine.model import XCLIP
    from xclip_engine.engine.runtime.choice import choose_for_checkpoint
    from xclip_engine.engine.tokenizer import ClipTokenizer

    if smoke:
        cfg = get_config("xclip-base-patch32").replace(
            vision_width=64, vision_layers=2, vision_heads=1, text_width=64, text_layers=1, text_heads=1,
            embed_dim=64, mit_heads=1, prompt_heads=1, image_size=32, patch_size=8)
    else:
        cfg = get_config("xclip-base-patch32")
    choice, net = choose_for_checkpoint(XCLIP(cfg.replace(num_frames=t)).eval(), "cpu")
    return Model(net, ClipTokenizer(), device="cpu", backend=choice.backend), choice.note


def run_point(point: dict, repeats: int, smoke: bool = False) -> dict:
    t, b, k = point["T"], point["B"], point["K"]
    torch.manual_seed(0)
    model, note = _model(t, smoke)
    c = model.config
    px = torch.randn(b, t, 3, c.image_size, c.image_size)
    text = torch.nn.functional.normalize(torch.randn(k, c.embed_dim), dim=-1)
    with torch.inference_mode():
        model.logits(px, text)                   # warm-up, not timed
        secs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.logits(px, text)
            secs.append(time.perf_counter() - t0)
    return {**point, "videos/s": b / min(secs), "s/video": min(secs) / b, "peak RSS MiB": _peak_rss_mib(),
            "seconds": secs, "path": note, "load avg": os.getloadavg()[0]}


def _point_in_subprocess(point, repeats, smoke) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, json; sys.path.insert(0, {here!r}); from ladder_growth import run_point; "
            f"print(json.dumps(run_point({point!r}, {repeats}, {smoke})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return {**point, "error": " / ".join(r.stderr.strip().splitlines()[-3:])}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cost(rows, base, axis, value):
    """s/video at `axis` = value with the other two coordinates at the base point."""
    return next((r["s/video"] for r in rows if r[axis] == value
                 and all(r[a] == base[a] for a in ("T", "B", "K") if a != axis)), None)


def linearity(rows, base) -> list[str]:
    """One sentence per axis from the measured cost per video, with the reason."""
    out = []
    t = sorted({r["T"] for r in rows})
    tc = [_cost(rows, base, "T", v) for v in t]
    if None not in tc and len(t) > 1:
        ratio = (tc[-1] / tc[0]) / (t[-1] / t[0])
        verdict = "about linear" if 0.8 <= ratio <= 1.25 else "faster than linear" if ratio > 1 else "below linear"
        out.append(f"Frames: cost per video grows {tc[-1] / tc[0]:.2f}x for {t[-1] / t[0]:.0f}x the frames, {verdict} "
                   "(linear expected: every frame runs the vision tower on its own; the cross-frame and MIT "
                   "attention are quadratic in T but act on one token per frame, a tiny share).")
    b = sorted({r["B"] for r in rows})
    bc = [_cost(rows, base, "B", v) for v in b]
    if None not in bc and len(b) > 1:
        out.append(f"Batch: cost per video goes {' -> '.join(f'{c * 1e3:.0f}' for c in bc)} ms for batch "
                   f"{', '.join(map(str, b))} (total cost linear in B; larger batches fill the matmul units "
                   "better, so per-video cost falls until they are full; memory grows linearly with B).")
    k = sorted({r["K"] for r in rows})
    kc = [_cost(rows, base, "K", v) for v in k]
    if None not in kc and len(k) > 1:
        slope = (kc[-1] - kc[0]) / (k[-1] - k[0])
        out.append(f"Labels: cost per video = {kc[0] * 1e3:.0f} ms at K = {k[0]} plus {slope * 1e6:.1f} us per "
                   f"label (affine in K: the text features are cached, but the video-specific prompt generator "
                   "runs once per (video, label) pair).")
    return out


def main(args) -> list[dict]:
    smoke = bool(getattr(args, "smoke", False))
    repeats = args.repeats or (1 if smoke else 2)
    base = SMOKE_BASE if smoke else BASE
    rows = []
    for point in points(smoke):
        rec = (run_point(point, repeats, smoke) if smoke or getattr(args, "in_process", False)
               else _point_in_subprocess(point, repeats, smoke))
        rows.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "seconds"}), flush=True)
    ok = [r for r in rows if "error" not in r]
    sentences = linearity(ok, base)
    cols = ["T", "B", "K", "videos/s", "s/video", "peak RSS MiB", "load avg", "error"]
    extra = {"base": base, "repeats": repeats, "path": ok[0]["path"] if ok else None, "linearity": sentences}
    table = write_report("growth", rows, cols, extra, args.out)
    with open(os.path.join(args.out, "growth.md"), "a") as f:
        f.write("\n" + "\n".join(f"- {s}" for s in sentences) + "\n")
    print(table)
    print("\n".join(sentences))
    return rows
