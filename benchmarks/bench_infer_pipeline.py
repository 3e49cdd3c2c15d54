"""`infer` end to end: the pipelined decoder (threads decoding ahead of the model) against a plain
loop that decodes a batch, then runs the model on it, then decodes the next; and where the time goes.

    python benchmarks/bench_infer_pipeline.py [--clips 48] [--size 320x240] [--seconds 4] [--workers 2]
        [--model xclip-base-patch32] [--labels 10] [--rounds 2] [--threads N]

Same model, same files, same batch size for both. Clips are generated (H.264, a moving gradient,
30 fps) in a temporary folder. Default model: the bundled demonstration model (64 px, 8 frames);
`--model NAME` loads a registry name with random weights (no download), e.g. xclip-base-patch32.
Each round runs plain then pipelined; the best and the median videos/s of the rounds are reported.

Profile: per video, decoding the sampled frames (PyAV, read_frames), preprocessing them (resize,
crop, normalize) and the model (one batch call divided by the batch size), each timed alone, best
of several repeats (other users of the machine only add time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_report  # noqa: E402

import xclip_engine as xe  # noqa: E402
from xclip_engine.engine.video.decoders import read_clip  # noqa: E402
from xclip_engine.engine.video.reader import read_frames, sample_indices  # noqa: E402
from xclip_engine.engine.video.transforms import preprocess  # noqa: E402

LABELS = ["cooking", "dancing", "surfing", "juggling", "knitting", "running", "swimming", "reading",
          "painting", "singing", "cycling", "skiing", "typing", "boxing", "diving", "rowing"]


def make_clips(folder: str, n: int, width: int, height: int, seconds: float, distinct: int,
               fps: int = 30) -> list[str]:
    """n H.264 clips (a gradient moving at a clip-specific speed): `distinct` encodes, the rest hard
    links to them (encoding is slow here; decoding a link costs what decoding its original does)."""
    paths = []
    y, x = np.mgrid[0:height, 0:width]
    for i in range(n):
        path = os.path.join(folder, f"clip{i:03d}.mp4")
        if i >= distinct:
            os.link(paths[i % distinct], path)
            paths.append(path)
            continue
        with av.open(path, "w") as out:
            s = out.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            for k in range(int(seconds * fps)):
                shift = k * (1 + i % 7)
                img = np.stack([(x + shift) % 256, (y + 2 * shift) % 256, np.full_like(x, 40 * (i % 6))], -1)
                out.mux(s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")))
            out.mux(s.encode())
        paths.append(path)
    return paths


def plain_loop(model, paths, labels, batch_size, decoder):
    """What a straightforward script does: decode a batch, then run the model, then the next."""
    text = model.encode_text(labels)
    c = model.config
    for b in range(0, len(paths), batch_size):
        clips = [read_clip(p, c.num_frames, c.image_size, decoder=decoder, device=str(model.device))
                 for p in paths[b:b + batch_size]]
        with torch.inference_mode():
            model.net(model._pixels(np.concatenate(clips)), text).softmax(-1).topk(min(5, len(labels)))


def pipelined(model, paths, labels, batch_size, workers, decoder, timings):
    for _ in model.classify_iter(paths, labels, topk=5, batch_size=batch_size, workers=workers, decoder=decoder,
                                 timings=timings):
        pass


def profile(model, paths, labels, batch_size):
    c = model.config
    decode, prep, frames = [], [], []
    for p in paths[:batch_size]:
        with av.open(p) as container:
            n = container.streams.video[0].frames
        idx = sample_indices(n, c.num_frames)
        best_decode = best_prep = float("inf")
        for _ in range(3):   # best of 3: load from other users of the machine only adds time
            t0 = time.perf_counter()
            f = read_frames(p, idx)
            t1 = time.perf_counter()
            x = preprocess(f, size=c.image_size)
            t2 = time.perf_counter()
            best_decode, best_prep = min(best_decode, t1 - t0), min(best_prep, t2 - t1)
        decode.append(best_decode)
        prep.append(best_prep)
        frames.append(x)
    pixels = np.concatenate(frames)
    text = model.encode_text(labels)
    model.logits(pixels, text)   # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        model.logits(pixels, text)
        times.append(time.perf_counter() - t0)
    return {"decode": statistics.median(decode), "preprocess": statistics.median(prep),
            "model": min(times) / len(frames)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated clips")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--distinct", type=int, default=8, help="clips encoded; the others are hard links to them")
    ap.add_argument("--model", default=None, help="registry name (random init) or a model folder; default: bundled")
    ap.add_argument("--labels", type=int, default=10, help=f"number of labels (at most {len(LABELS)})")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--decoder", default="pyav", choices=["auto", "dali", "pyav"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    if not 1 <= args.labels <= len(LABELS):
        ap.error(f"--labels must be 1..{len(LABELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model is None:
        model, model_name = xe.load(), "bundled default (64 px, 8 frames)"
    elif os.path.exists(args.model):
        model, model_name = xe.load(args.model), args.model
    else:
        model, model_name = xe.load(args.model, random_init=True), f"{args.model} (random init)"
    labels = LABELS[:args.labels]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = make_clips(tmp, args.clips, width, height, args.seconds, max(1, args.distinct))
        print(f"made {len(paths)} clips {width}x{height}, {args.seconds} s, in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        plain_loop(model, paths[:args.batch_size], labels, args.batch_size, args.decoder)   # warm-up
        rates = {"plain": [], "pipelined": []}
        timings = {}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            plain_loop(model, paths, labels, args.batch_size, args.decoder)
            rates["plain"].append(len(paths) / (time.perf_counter() - t0))
            timings = {}
            t0 = time.perf_counter()
            pipelined(model, paths, labels, args.batch_size, args.workers, args.decoder, timings)
            rates["pipelined"].append(len(paths) / (time.perf_counter() - t0))
            print(f"round {r + 1}: plain {rates['plain'][-1]:.2f}, pipelined {rates['pipelined'][-1]:.2f} videos/s",
                  file=sys.stderr)
        prof = profile(model, paths, labels, args.batch_size)

    rows = []
    for mode, label in (("plain", "plain loop: decode a batch, then the model"),
                        ("pipelined", f"pipeline: {args.workers} decode workers ahead of the model")):
        rows.append({"what": label, "videos/s best": max(rates[mode]),
                     "videos/s median": statistics.median(rates[mode]),
                     "speed-up (best)": max(rates[mode]) / max(rates["plain"])})
    total = sum(prof.values())
    prof_rows = [{"stage": k, "ms per video": 1000 * v, "share": f"{100 * v / total:.0f}%"} for k, v in prof.items()]
    extra = {"model": model_name, "clips": args.clips, "size": [width, height], "seconds": args.seconds,
             "labels": args.labels, "batch_size": args.batch_size, "workers": args.workers, "decoder": args.decoder,
             "torch_threads": torch.get_num_threads(), "rates": rates, "profile_s_per_video": prof,
             "pipeline_timings_last_round": timings, "load_average": list(os.getloadavg())}
    table = write_report("bench_infer_pipeline", rows, ["what", "videos/s best", "videos/s median", "speed-up (best)"],
                         extra, args.out)
    prof_table = "\n".join(["| stage | ms per video | share |", "|---|---|---|"]
                           + [f"| {r['stage']} | {r['ms per video']:.1f} | {r['share']} |" for r in prof_rows])
    with open(os.path.join(args.out, "bench_infer_pipeline.md"), "a") as f:
        f.write("\n" + prof_table + "\n")
    print(f"model: {model_name}; {args.clips} clips {width}x{height} {args.seconds} s; {args.labels} labels; "
          f"batch {args.batch_size}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    print(table)
    print()
    print(prof_table)
    t = timings
    if t:
        print(f"\npipeline, last round: decode {t['decode_s']:.2f} s (summed over workers), model "
              f"{t['model_s']:.2f} s, model waiting for decodes {t['wait_s']:.2f} s")


if __name__ == "__main__":
    main()
