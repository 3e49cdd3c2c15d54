"""Reference backend against transformers' eager XCLIPModel: X-CLIP B/32, 8 frames, CPU, fp32.

    python benchmarks/bench_reference.py [--batches 1 8] [--labels 400] [--repeats 3]

Same random weights in both (transformers builds them, xe.load reads the saved folder). Two
questions, one run:
- video tower alone: get_video_features vs Model.encode_video;
- a classification call with K labels: transformers' forward (text encoder inside every call, as
  its API works) vs Model.logits with the label features computed once and cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import matmul_gflops, median_time, write_report  # noqa: E402

GFLOP_PER_VIDEO = 71.0   # X-CLIP B/32 8 frames video tower (docs/machines.md §8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--labels", type=int, default=400, help="K labels (Kinetics-400 names)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    from transformers import XCLIPConfig, XCLIPModel

    import xclip_engine as xe

    torch.manual_seed(0)
    hf = XCLIPModel(XCLIPConfig()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = xe.load(d, device="cpu")
    labels = xe.load_labels("k400")[: args.labels]
    ids = ours.tokenizer(labels)
    ids = ids[:, : int(ids.argmax(-1).max()) + 1]   # padding=True: as long as the longest label
    gflops = matmul_gflops()
    print(f"matmul fp32: {gflops:.0f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)

    rows = []
    for b in args.batches:
        x = torch.randn(b, 8, 3, 224, 224)
        with torch.inference_mode():
            t_hf_video = median_time(lambda: hf.get_video_features(pixel_values=x), repeats=args.repeats)
            t_ours_video = median_time(lambda: ours.encode_video(x), repeats=args.repeats)
            t_hf_full = median_time(lambda: hf(input_ids=ids, pixel_values=x), repeats=args.repeats)
            text = ours.encode_text(labels)   # computed once per label set, as Model.classify does
            t_ours_full = median_time(lambda: ours.logits(x, text), repeats=args.repeats)
        for what, t_hf, t_ours in [("video tower", t_hf_video, t_ours_video),
                                   (f"logits, K={len(labels)}", t_hf_full, t_ours_full)]:
            row = {"batch": b, "what": what, "transformers videos/s": b / t_hf, "reference videos/s": b / t_ours,
                   "speedup": t_hf / t_ours,
                   "reference % of matmul": 100 * GFLOP_PER_VIDEO * b / t_ours / gflops}
            rows.append(row)
            print(row, flush=True)
    cols = ["batch", "what", "transformers videos/s", "reference videos/s", "speedup", "reference % of matmul"]
    print(write_report("bench_reference", rows, cols, {"matmul_gflops_fp32": gflops}, args.out))


if __name__ == "__main__":
    main()
