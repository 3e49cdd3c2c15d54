"""Which layers int8 hurts: quantize an export folder's video graph with one more group of layers kept
float at a time, and measure top-1 agreement and logit error against the fp32 graph.

    python benchmarks/int8_sensitivity.py --export DIR [--videos 32] [--calibrate CLIPS_DIR]

The groups are export/quantize.py's rule, added in turn: nothing float; + products of two
activations (attention); + X-CLIP's cross-frame message modules; + everything outside the vision
blocks (the rule `export --int8` uses). Inputs: seeded normal videos (calibrated on 8 others of the
same distribution), or with --calibrate a folder of clips, calibrated on its first 8 and judged on
the rest. Runs the graphs in OpenVINO when installed (faster), else ONNX Runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import torch

GROUPS = ["a product of two activations (attention)", "cross-frame message module",
          "outside the vision transformer's blocks (patch embedding, projections, heads)"]


def _runner(path: str):
    try:
        import openvino as ov

        core = ov.Core()
        net = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = net.create_infer_request()
        return lambda feeds: request.infer(feeds)[net.output(0)].copy()
    except ImportError:
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]


def _logits(path, pixels, text, batch=8):
    run = _runner(path)
    out = []
    for i in range(0, len(pixels), batch):
        feeds = {"pixel_values": pixels[i:i + batch]}
        if text is not None:
            feeds["text_features"] = text
        out.append(run(feeds))
    return np.concatenate(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="an export folder (xclip-engine export)")
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--calibrate", default=None, help="a folder of clips (default: seeded normal videos)")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import xclip_engine as xe
    from xclip_engine.export.calibration import calibration_pixels
    from xclip_engine.export.quantize import layers_kept_in_float, quantize_static_int8

    m = xe.load(args.export, backend="onnxruntime", precision="fp32")
    c = m.config
    if args.calibrate:
        px = calibration_pixels(c, args.calibrate, 8 + args.videos).numpy()
        calib, test = px[:8], px[8:]
    else:
        g = torch.Generator().manual_seed(5)
        px = torch.randn(8 + args.videos, c.num_frames, 3, c.image_size, c.image_size, generator=g).numpy()
        calib, test = px[:8], px[8:]
    evl = m.net.family == "evl"
    # the model's own labels when the folder has them (a model's logits over labels it never saw are
    # near-ties, where agreement measures nothing), else Kinetics-400's
    text = None if evl else m.encode_text(list(m.labels or xe.load_labels("k400"))).numpy()
    feeds = [{"pixel_values": calib[i:i + 2], **({} if evl else {"text_features": text[::max(1, len(text) // 32)]})}
             for i in range(0, len(calib), 2)]
    src = os.path.join(args.export, "video.fp32.onnx")
    rule = layers_kept_in_float(onnx.load(src, load_external_data=False))
    ref = _logits(src, test, text)
    span = float(ref.max() - ref.min()) or 1.0
    print(f"{len(test)} videos, fp32 reference from {src}")
    print("| kept float | nodes | top-1 agreement | max logit error, % of range | s/batch of 8 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(len(GROUPS) + 1):
            keep = {k: v for k, v in rule.items() if v in GROUPS[:n]}
            dst = os.path.join(tmp, f"int8_{n}.onnx")
            quantize_static_int8(src, dst, feeds, keep)
            t0 = time.perf_counter()
            got = _logits(dst, test, text)
            secs = (time.perf_counter() - t0) / max(1, len(test) / 8)
            agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
            what = "nothing" if n == 0 else " + ".join(g.split(" (")[0] for g in GROUPS[:n])
            print(f"| {what} | {len(keep)} | {100 * agree:.1f}% | {100 * float(np.abs(got - ref).max()) / span:.2f} "
                  f"| {secs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
