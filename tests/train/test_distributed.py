"""torchrun with 2 CPU processes (gloo) reaches the same losses as 1 process with the same global batch.

Tolerance: the per-update global losses agree to 1e-5 relative and Adam's first moments (a running
mean of the gradients, so a linear function of them) to 1e-3 of each tensor's largest value. The
weights themselves are not compared element by element: gradients that are zero in exact arithmetic
(the key biases of every attention) come out as ~1e-10 noise whose value depends on the summation
order, and Adam divides that noise by its own magnitude, so those entries move by up to lr in
either run. Everything else agrees to float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_close

from xclip_engine.train.config import load_run_config
from xclip_engine.train.trainer import run

from .trainer_data import tiny_overrides, write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _torchrun(nproc: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "xclip_engine.train.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=4)       # 8 clips: 2 updates of 4 per epoch
    extra = {"train.epochs": 2, "data.color_jitter": 0.8, "data.grayscale": 0.2, "train.label_smoothing": 0.1,
             "data.val_list": data["list"]}   # evaluation after each epoch, split across the processes
    run(load_run_config(None, tiny_overrides(data, tmp_path / "one", **extra, **{"train.batch_size": 4})),
        quiet=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  seed: 1024\n")
    r = _torchrun(2, [str(cfg), "-q", *tiny_overrides(data, tmp_path / "two", **extra, **{"train.batch_size": 2})])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    train1, train2 = [x for x in one if "loss" in x], [x for x in two if "loss" in x]
    assert [x["step"] for x in train2] == [1, 2, 3, 4], "rank 0 alone writes the metrics, one row per update"
    for a, b in zip(train1, train2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
    val1, val2 = [x for x in one if "val_top1" in x], [x for x in two if "val_top1" in x]
    assert [x["val_n"] for x in val2] == [8, 8], "each process evaluated half, the counts were summed"
    assert [x["val_top1"] for x in val2] == [x["val_top1"] for x in val1]
    log = (tmp_path / "two" / "train.log").read_text()
    assert "2 process(es)" in log and "global batch 4" in log
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    sa, sb = a["train"]["optimizer"]["state"], b["train"]["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert_close(sb[i]["exp_avg"], sa[i]["exp_avg"], rtol=1e-3, name=f"Adam first moment of parameter {i}")
    # the exported model of the 2-process run loads like any other
    assert os.path.isfile(tmp_path / "two" / "model" / "model.safetensors")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl)")
def test_two_gpu_processes_with_nccl(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=4)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  device: cuda\n")
    r = _torchrun(2, [str(cfg), "-q", *tiny_overrides(data, tmp_path / "two", **{"train.batch_size": 2,
                                                                                 "train.epochs": 1})])
    assert r.returncode == 0, r.stderr[-4000:]
    assert [x["step"] for x in _rows(tmp_path / "two")] == [1, 2]
