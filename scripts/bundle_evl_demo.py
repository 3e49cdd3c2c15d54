"""Package a trained EVL run as the bundled EVL demonstration model.

    python scripts/bundle_evl_demo.py RUN/best [--check DATASET]

Writes engine/assets/evl_demo/ in our format (xclip_engine.json + model.safetensors): the weights
in fp16 (the model loads them back into fp32; as the X-CLIP demo, engine/assets/default_model),
the class names, and EVL's test-time preprocessing spec, so the demo works offline. The run is
train/configs/shapes_evl.yaml: EVL's decoder and head on the bundled X-CLIP's frozen vision tower,
trained on the synthetic `shapes` data set. The example clips of examples/ (bundled with the X-CLIP
demo, same 80 classes) serve this model too.

With --check DATASET the bundled copy is evaluated on DATASET/test.txt (1x1 and 3x1 views), to
show that fp16 storage costs no accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "engine", "assets", "evl_demo")
NOTE = ("xclip-engine EVL demonstration model: the bundled X-CLIP's vision tower (frozen) with an EVL "
        "decoder and head trained on the synthetic shapes data set")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the trained EVL (a run's best/ or model/ folder, or last.pt)")
    p.add_argument("--check", metavar="DATASET", default=None, help="evaluate the bundled copy on DATASET/test.txt")
    args = p.parse_args(argv)

    from xclip_engine.engine.checkpoint import load_model, save_model
    from xclip_engine.train.evl import evl_spec

    loaded = load_model(args.model)
    model = loaded.model
    if model.config.family != "evl":
        raise SystemExit(f"{args.model} is an {model.config.family} model, not an EVL")
    if not loaded.labels or len(loaded.labels) != model.config.num_classes:
        raise SystemExit(f"{args.model} carries no class names for its {model.config.num_classes} classes")
    info = {k: loaded.meta[k] for k in ("trained_steps", "val_top1", "val_top5") if k in loaded.meta}
    shutil.rmtree(OUT, ignore_errors=True)
    save_model(model.half(), OUT, labels=loaded.labels, note=NOTE, preprocessing=evl_spec(model.config), **info)
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({size / 1e6:.1f} MB, {len(loaded.labels)} classes)")
    if args.check:
        from xclip_engine.train.evaluate import evaluate

        for views in ("1x1", "3x1"):
            res = evaluate(OUT, os.path.join(args.check, "test.txt"), os.path.join(args.check, "labels_train.csv"),
                           views=views, workers=2)
            print(f"bundled copy, test split, {views} views: top-1 {res['top1']:.2%} top-5 {res['top5']:.2%} "
                  f"on {res['n']} videos")


if __name__ == "__main__":
    main()
