"""The whole triton backend against transformers' XCLIPModel (eager and SDPA) and our reference backend.

    python benchmarks/bench_triton_backend.py [--videos 8] [--labels 400] [--dtypes fp16 bf16 fp32]

Same random weights everywhere (transformers builds them, xe.load reads the saved folder), X-CLIP
B/32 and B/16 with 8 frames, on the GPU:
- video tower: get_video_features vs XCLIP.encode_video;
- logits with K labels: transformers' forward (its text encoder runs inside every call, as its
  API works) vs our logits with the label features computed once, as Model.classify does.
Target: the triton backend >= 2x transformers' eager model at fp16 on B/16, 8 frames.
Accuracy: max |logits - our fp32 reference logits|. Needs a CUDA GPU; prints why and exits 0.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]
import kernel_bench as kb  # noqa: E402
from xclip_factory import TINY_HF as SMOKE_CONFIG  # noqa: E402  (the tests' tiny model: one definition)

HF_CONFIGS = {"B/32": {}, "B/16": {"vision_config": {"patch_size": 16}}}


def main(argv=None):
    args = kb.parse_args(__doc__, argv, extra=lambda p: p.add_argument("--labels", type=int, default=400))
    if not kb.ready("bench_triton_backend", args):
        return 0
    from transformers import XCLIPConfig, XCLIPModel

    import xclip_engine as xe

    labels = xe.load_labels("k400")[: 3 if args.smoke else args.labels]
    rows = []
    for model, hf_kwargs in ({"smoke": SMOKE_CONFIG} if args.smoke else HF_CONFIGS).items():
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            XCLIPModel(XCLIPConfig(**hf_kwargs)).save_pretrained(folder)
            for name in args.dtypes:
                for row in bench_one(folder, labels, kb.DTYPES[name], args):
                    rows.append({"model": model, "dtype": name, **row})
                    print(rows[-1], flush=True)
    kb.report("bench_triton_backend", rows, "videos/s", args)
    return 0


def bench_one(folder, labels, dt, args) -> list[dict]:
    """Rows for one saved model folder at one dtype: video tower, then logits with K labels."""
    from transformers import XCLIPModel

    import xclip_engine as xe

    dev = kb.device(args)
    ref = xe.load(folder, device=dev)
    c = ref.config
    ids = ref.tokenizer(labels)
    ids = ids[:, : int(ids.argmax(-1).max()) + 1].to(dev)          # as long as the longest label
    g = torch.Generator().manual_seed(1)
    pixels32 = torch.randn(args.videos, c.num_frames, 3, c.image_size, c.image_size, generator=g).to(dev)
    with torch.inference_mode():                                   # the yardsticks: our fp32 reference
        video32, logits32 = ref.net.encode_video(pixels32), ref.net(pixels32, ref.net.encode_text(ids))
    hf = {impl: XCLIPModel.from_pretrained(folder, attn_implementation=impl, dtype=dt).to(dev).eval()
          for impl in ("eager", "sdpa")}
    ours = {"reference": ref.net.to(dt), "triton": xe.load(folder, backend="triton", device=dev).net.to(dt)}
    px = pixels32.to(dt)
    with torch.inference_mode():
        text = {b: net.encode_text(ids) for b, net in ours.items()}   # once per label set
    tower = {f"transformers {i}": (lambda m=m: m.get_video_features(pixel_values=px)) for i, m in hf.items()}
    tower.update({f"ours {b}": (lambda n=n: n.encode_video(px)) for b, n in ours.items()})
    full = {f"transformers {i}": (lambda m=m: m(input_ids=ids, pixel_values=px).logits_per_video)
            for i, m in hf.items()}
    full.update({f"ours {b}": (lambda n=n, b=b: n(px, text[b])) for b, n in ours.items()})
    rows = []
    for what, cands, yardstick in [("video tower", tower, video32), (f"logits K={len(labels)}", full, logits32)]:
        for row in kb.measure({k: _plain(f) for k, f in cands.items()}, yardstick, args, args.videos, "videos/s"):
            rows.append({"shape": f"{c.num_frames} frames, B={args.videos}, {what}", **row})
    return rows


def _plain(fn):
    # transformers 5 returns model outputs (pooler_output) where 4.x returned tensors
    return lambda: getattr(out := fn(), "pooler_output", out)


if __name__ == "__main__":
    sys.exit(main())
