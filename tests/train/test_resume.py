"""Checkpoints: N updates + resume for M equals N + M straight; an interrupted write or a kill -9
leaves the last complete checkpoint readable."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest
import torch
from click.testing import CliRunner

import xclip_engine.engine.api as xe
from xclip_engine.engine.checkpoint import CheckpointError
from xclip_engine.train import checkpoint as ckpt
from xclip_engine.train.cli import train_cmd
from xclip_engine.train.config import load_run_config
from xclip_engine.train.trainer import run

from .trainer_data import tiny_overrides, write_dataset

# every source of randomness on: crop/flip/jitter/grayscale, mixup and cutmix, label smoothing,
# plus accumulation over two micro-batches
RANDOM = {"train.batch_size": 2, "train.accumulation_steps": 2, "train.epochs": 3, "train.mixup": 0.8,
          "train.cutmix": 1.0, "train.label_smoothing": 0.1, "data.color_jitter": 0.8, "data.grayscale": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("resume"), num_classes=2, per_class=5)   # 10 clips


def _rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_gives_the_same_weights_as_a_straight_run(data, tmp_path):
    # 10 clips, window 2 x 2 = 4: 2 updates per epoch; stopping after 3 stops in the middle of epoch 1
    run(load_run_config(None, tiny_overrides(data, tmp_path / "straight", **RANDOM, **{"train.stop_at_step": 5})),
        quiet=True)
    run(load_run_config(None, tiny_overrides(data, tmp_path / "split", **RANDOM, **{"train.stop_at_step": 3})),
        quiet=True)
    first = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert (first["train"]["step"], first["train"]["epoch"], first["train"]["update_in_epoch"]) == (3, 1, 1)
    cfg = tmp_path / "split.yaml"
    cfg.write_text("train:\n  seed: 1024\n")
    args = [str(cfg), *tiny_overrides(data, tmp_path / "split", **RANDOM, **{"train.stop_at_step": 5}),
            "--resume", str(tmp_path / "split"), "-q"]
    r = CliRunner().invoke(train_cmd, args)
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    sa, sb = a["train"]["optimizer"]["state"], b["train"]["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]), f"optimizer state {i} differs"
    assert a["train"]["scheduler"]["last_epoch"] == b["train"]["scheduler"]["last_epoch"] == 5
    # the resumed run logs the same losses for updates 4-5 as the straight one
    la = {r["step"]: r["loss"] for r in _rows(tmp_path / "straight")}
    lb = {r["step"]: r["loss"] for r in _rows(tmp_path / "split")}
    assert sorted(lb) == [1, 2, 3, 4, 5] and all(la[s] == lb[s] for s in la)


def test_an_interrupted_write_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(load_run_config(None, tiny_overrides(data, out, **{"train.stop_at_step": 1})), quiet=True)
    before = ckpt.load_training_checkpoint(str(out))
    assert before["train"]["step"] == 1

    def dies_half_way(obj, f, *a, **k):   # as if the process died inside torch.save
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        run(load_run_config(None, tiny_overrides(data, out, **{"train.stop_at_step": 2})), resume=str(out),
            quiet=True)
    monkeypatch.undo()
    after = ckpt.load_training_checkpoint(str(out))
    assert after["train"]["step"] == 1 and not (out / "last.pt.tmp").exists()
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k])
    assert xe.load(str(out / "last.pt")).labels == ["class 0", "class 1"]


def _train_forever(overrides):
    run(load_run_config(None, overrides), quiet=True)


def test_kill_9_mid_run_leaves_a_readable_checkpoint(data, tmp_path):
    """A real SIGKILL of a training process that saves after every update. The child is forked
    from this test process (torch already imported there, so it starts in milliseconds)."""
    out = tmp_path / "run"
    overrides = tiny_overrides(data, out, **{"train.save_every": 1, "train.epochs": 200, "train.batch_size": 2})
    child = multiprocessing.get_context("fork").Process(target=_train_forever, args=(overrides,))
    child.start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.is_alive():
            if (out / "metrics.jsonl").exists() and len(_rows(out)) >= 3:
                break
            time.sleep(0.05)
        assert child.is_alive(), "the training process ended before it could be killed"
        time.sleep(0.13)   # land somewhere in the next update or its checkpoint write
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
    assert child.exitcode == -signal.SIGKILL
    state = ckpt.load_training_checkpoint(str(out))     # complete and readable, whatever the timing
    step = state["train"]["step"]
    assert step >= 2 and step <= max(r["step"] for r in _rows(out))
    assert xe.load(str(out / "last.pt")).labels == ["class 0", "class 1"]
    # and the run goes on from it
    summary = run(load_run_config(None, tiny_overrides(data, out, **{
        "train.save_every": 1, "train.epochs": 200, "train.batch_size": 2, "train.stop_at_step": step + 1})),
        resume=str(out), quiet=True)
    assert summary["step"] == step + 1


def test_resume_refuses_what_it_cannot_continue(data, tmp_path):
    out = tmp_path / "run"
    run(load_run_config(None, tiny_overrides(data, out, **{"train.stop_at_step": 1})), quiet=True)
    with pytest.raises(CheckpointError, match="model config differs"):
        run(load_run_config(None, tiny_overrides(data, tmp_path / "b", **{"model.config.vision_layers": 1})),
            resume=str(out), quiet=True)
    other = tmp_path / "official.pth"
    torch.save({"model": {"visual.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run(load_run_config(None, tiny_overrides(data, tmp_path / "c")), resume=str(other), quiet=True)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        run(load_run_config(None, tiny_overrides(data, tmp_path / "d")), resume=str(tmp_path / "nothing"),
            quiet=True)
