"""Package a trained run as the bundled demonstration model and pick the example clips.

    python scripts/bundle_default_model.py RUN/model DATASET [--examples 6]

Writes engine/assets/default_model/ (weights in fp16 safetensors: the model loads them back into
fp32, and fp16 halves the size; most of it is CLIP's 49,408-token embedding) with the label list,
and copies the first test clip of `--examples` classes, spread over the label list and each with a
different motion (labels read "a <colour> <shape> <motion>"), to examples/<index>_<label>.mp4: the
file name says the true class.
"""

from __future__ import annotations

import argparse
import os
import shutil

import xclip_engine as xe
from xclip_engine.engine.checkpoint import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--examples", type=int, default=6)
    args = p.parse_args(argv)

    m = xe.load(args.model)
    out = os.path.join(ROOT, "engine", "assets", "default_model")
    shutil.rmtree(out, ignore_errors=True)
    save_model(m.net.half(), out, labels=m.labels, note="xclip-engine demonstration model, synthetic shapes data set")

    with open(os.path.join(args.dataset, "test.txt")) as f:
        tests = [line.split() for line in f if line.strip()]
    first = {}
    for rel, label in tests:
        first.setdefault(int(label), rel)
    ex_dir = os.path.join(ROOT, "examples")
    shutil.rmtree(ex_dir, ignore_errors=True)
    os.makedirs(ex_dir)
    step = len(m.labels) / args.examples
    motions: set = set()
    for n in range(args.examples):
        label = int(n * step)
        while m.labels[label].split(" ", 3)[-1] in motions and label + 1 < len(m.labels):
            label += 1
        motions.add(m.labels[label].split(" ", 3)[-1])
        name = f"{n + 1:02d}_{m.labels[label].replace(' ', '_')}.mp4"
        shutil.copyfile(os.path.join(args.dataset, first[label]), os.path.join(ex_dir, name))
    print(f"wrote {out} and {args.examples} clips to {ex_dir}")


if __name__ == "__main__":
    main()
