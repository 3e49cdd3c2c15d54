"""Bad input to the trainer: missing and corrupt videos (skipped and reported by path and line, or
a stop under --strict), label ids outside the label set, malformed lists and configs."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from video_factory import write_junk_video, write_text_as_video, write_zero_byte

from xclip_engine.train.cli import eval_cmd, train_cmd
from xclip_engine.train.config import ConfigError, load_run_config
from xclip_engine.train.data import DataError, read_list
from xclip_engine.train.trainer import run

from .trainer_data import tiny_overrides, write_dataset, write_labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("bad"), num_classes=2, per_class=3)   # 6 good clips


def _with_lines(data, tmp_path, extra: list[str], name="list.txt") -> str:
    """The good list plus `extra` lines (paths relative to the data root) appended."""
    with open(data["list"]) as f:
        good = f.read()
    p = os.path.join(data["root"], f"{tmp_path.name}_{name}")
    with open(p, "w") as f:
        f.write(good + "".join(line + "\n" for line in extra))
    return p


@pytest.fixture(scope="module")
def broken(data):
    """Three unusable files beside the good clips: empty, text, undecodable packets."""
    root = data["root"]
    write_zero_byte(os.path.join(root, "videos", "empty.mp4"))
    write_text_as_video(os.path.join(root, "videos", "text.mp4"))
    write_junk_video(os.path.join(root, "videos", "junk.mkv"))
    return ["videos/empty.mp4 0", "videos/text.mp4 1", "videos/junk.mkv 0"]


def _cli(args):
    return CliRunner().invoke(train_cmd, args)


def test_missing_and_corrupt_videos_are_reported_by_path_and_line_and_skipped(data, broken, tmp_path, capsys):
    lst = _with_lines(data, tmp_path, ["videos/gone.mp4 1", *broken])   # lines 7 (missing), 8-10 (corrupt)
    out = tmp_path / "run"
    summary = run(load_run_config(None, tiny_overrides({**data, "list": lst}, out, **{
        "train.batch_size": 3, "train.epochs": 2, "data.workers": 2})), quiet=True)
    err = capsys.readouterr().err
    assert f"{os.path.join(data['root'], 'videos/gone.mp4')} ({lst} line 7): video not found" in err
    for n, line in enumerate(broken, start=8):
        path = os.path.join(data["root"], line.split()[0])
        assert f"skipped {path} ({lst} line {n}):" in err, err
        assert err.count(f"{path} ({lst} line {n})") == 1, "each bad video is reported once per run"
    # 9 usable entries (6 good + 3 corrupt), batch 3: 3 updates per epoch; the epochs went on
    assert summary["step"] == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in rows) == 6          # 3 corrupt clips in each of the 2 epochs
    assert "warning: skipped" in (out / "train.log").read_text()


def test_strict_stops_at_a_missing_video(data, tmp_path):
    lst = _with_lines(data, tmp_path, ["videos/gone.mp4 1"])
    r = _cli([_cfg(tmp_path), *tiny_overrides({**data, "list": lst}, tmp_path / "run"),
              "--strict"])
    assert r.exit_code == 1
    assert f"videos/gone.mp4 ({lst} line 7): video not found" in r.output and "--strict" in r.output


def test_strict_stops_at_a_corrupt_video(data, broken, tmp_path):
    lst = _with_lines(data, tmp_path, broken[1:2])    # text.mp4 on line 7
    with pytest.raises(DataError, match=rf"text\.mp4 \({lst} line 7\): .*--strict"):
        run(load_run_config(None, tiny_overrides({**data, "list": lst}, tmp_path / "run", **{
            "data.strict": True, "train.batch_size": 7, "train.epochs": 1})), quiet=True)


def test_a_label_id_outside_the_label_set_stops_with_the_line(data, tmp_path):
    lst = _with_lines(data, tmp_path, ["videos/train_0_0.mp4 1", "videos/train_0_1.mp4 2"])
    r = _cli([_cfg(tmp_path), *tiny_overrides({**data, "list": lst}, tmp_path / "run")])
    assert r.exit_code == 1
    assert f"{lst} line 8: label id 2 is outside the label set (ids 0..1)" in r.output
    with pytest.raises(DataError, match="line 1: label id -1"):
        read_list(_write(tmp_path / "neg.txt", "videos/train_0_0.mp4 -1\n"), 2)


@pytest.mark.parametrize("line, what", [
    ("videos/train_0_0.mp4", "expected 'relative/path.mp4 label_id'"),
    ("videos/train_0_0.mp4 dog", "label id 'dog' is not an integer"),
])
def test_malformed_list_lines_name_the_line(data, tmp_path, line, what):
    lst = _write(tmp_path / "l.txt", f"videos/train_0_0.mp4 0\n\n{line}\n")
    with pytest.raises(DataError, match=rf"l\.txt line 3: {what}"):
        read_list(lst, 2, root=data["root"])


def test_lists_and_labels_that_cannot_be_used(data, tmp_path):
    with pytest.raises(DataError, match="no usable videos"):
        read_list(_write(tmp_path / "gone.txt", "a.mp4 0\nb.mp4 1\n"), 2)
    with pytest.raises(DataError, match="no such list file"):
        read_list(str(tmp_path / "nothing.txt"), 2)
    with pytest.raises(DataError, match="labels file"):
        run(load_run_config(None, tiny_overrides({**data, "labels": str(tmp_path / "none.csv")}, tmp_path / "r")),
            quiet=True)
    bad_csv = _write(tmp_path / "bad.csv", "id,name\n0,a\n2,b\n")
    with pytest.raises(DataError, match="ids must run 0..1"):
        run(load_run_config(None, tiny_overrides({**data, "labels": bad_csv}, tmp_path / "r")), quiet=True)
    with pytest.raises(DataError, match="do not fill one update of 8 clips"):
        run(load_run_config(None, tiny_overrides(data, tmp_path / "r", **{"train.batch_size": 8})), quiet=True)


@pytest.mark.parametrize("override, message", [
    ("train.epohcs=3", "unknown key(s) ['train.epohcs']"),
    ("trian.epochs=3", "unknown section(s) ['trian']"),
    ("epochs=3", "write it as section.key=value"),
    ("train.epochs", "write it as section.key=value"),
    ("train.amp=fp8", "train.amp = 'fp8': must be none, bf16 or fp16"),
    ("train.batch_size=0", "train.batch_size = 0: must be an integer >= 1"),
    ("optim.lr=fast", "optim.lr = 'fast': must be a number"),
    ("data.flip=2", "data.flip = 2.0: must be a probability"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(None, [override])
    assert message in str(e.value)


def test_config_errors_exit_2_from_the_cli(data, tmp_path):
    cfg = _cfg(tmp_path)
    r = _cli([cfg, "train.epohcs=3"])
    assert r.exit_code == 2 and "train.epohcs" in r.output
    r = _cli([cfg])
    assert r.exit_code == 2 and "data.train_list is not set" in r.output
    r = _cli([str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "no such config file" in r.output
    bad_yaml = _write(tmp_path / "bad.yaml", "train: [unclosed\n")
    r = _cli([bad_yaml])
    assert r.exit_code == 2 and "not valid YAML" in r.output
    r = _cli([cfg, *tiny_overrides(data, tmp_path / "run", **{"train.amp": "fp16", "train.device": "cpu"})])
    assert r.exit_code == 2 and "fp16 needs a CUDA GPU" in r.output and "bf16" in r.output
    r = _cli([cfg, *tiny_overrides(data, tmp_path / "run", **{"model.arch": "xclip-huge"})])
    assert r.exit_code == 2 and "unknown model name 'xclip-huge'" in r.output
    r = CliRunner().invoke(eval_cmd, [str(tmp_path / "no-model"), "--list", data["list"], "--labels", data["labels"]])
    assert r.exit_code == 2 and "no such file or folder" in r.output
    r = CliRunner().invoke(eval_cmd, ["xclip-tiny-test", "--list", data["list"], "--labels", data["labels"],
                                      "--few-shot", "1"])
    assert r.exit_code == 2 and "needs --train-list" in r.output


def _cfg(tmp_path) -> str:
    return _write(tmp_path / "cfg.yaml", "train:\n  seed: 1024\n")


def _write(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_labels_files_in_both_layouts(tmp_path):
    from xclip_engine.train.data import read_labels

    assert read_labels(write_labels(tmp_path / "a.csv", ["x", "y"])) == ["x", "y"]
    assert read_labels(_write(tmp_path / "b.txt", "x\ny\n")) == ["x", "y"]
