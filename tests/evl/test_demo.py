"""The bundled EVL demonstration model (engine/assets/evl_demo): loads by name, offline, and names
the example clips (examples/NN_<label>.mp4) right with EVL's own preprocessing."""

import glob
import os

from click.testing import CliRunner

import xclip_engine as xe
from xclip_engine.engine.cli import main

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "*.mp4")))


def label_of(path):
    return os.path.basename(path)[3:-4].replace("_", " ")


def test_evl_demo_loads_by_name_and_names_the_examples():
    m = xe.load("evl-demo")
    assert m.family == "evl" and m.kind == "xclip-engine" and m.num_classes == 80 and len(m.labels) == 80
    assert m.default_views == "3x1" and m.preprocessing["stride"] == 3
    assert len(EXAMPLES) == 6
    preds = m.classify(EXAMPLES, topk=1)
    assert [p.top[0][0] for p in preds] == [label_of(p) for p in EXAMPLES]


def test_infer_with_evl_demo_on_the_command_line():
    r = CliRunner().invoke(main, ["infer", *EXAMPLES, "--model", "evl-demo", "--topk", "1", "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    assert all(label_of(p) in r.stdout for p in EXAMPLES)
