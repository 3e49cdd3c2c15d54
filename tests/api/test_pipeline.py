"""`xe.infer`, the one pipeline the CLI runs: answers, output files, resume, shards and windows,
and the same files as `xclip-engine infer` for the same arguments.

The tests that only count rows replace the decoder by a fake (engine.video.decoders.read_clip); the
ones that compare with the CLI or check answers decode real videos."""

import collections.abc
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine.cli import main
from xclip_engine.engine.io.results import ResultsFileError, ShardError
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.reader import VideoError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.mp4")))
LABELS = ["cooking", "dancing", "surfing"]


def cli(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def fake_clip(path, num_frames, size, views="1x1", decoder="auto", device=None):
    """A constant clip whose value depends on the file name; files named bad* fail."""
    name = os.path.basename(path)
    if name.startswith("bad"):
        raise VideoError(path, "fake damage")
    return np.full((1, num_frames, 3, size, size), (sum(map(ord, name)) % 5 - 2) / 2, np.float32)


@pytest.fixture
def names_dir(tmp_path, monkeypatch):
    """10 empty files named like videos, 2 of them 'bad', read by the fake decoder."""
    monkeypatch.setattr(decoders, "read_clip", fake_clip)
    d = tmp_path / "in"
    d.mkdir()
    names = [f"v{i:02d}.mp4" for i in range(8)] + ["bad_a.mp4", "bad_b.mp4"]
    for n in names:
        (d / n).write_bytes(b"")
    return d, sorted(str(d / n) for n in names)


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    return xe.load(str(tiny_hf))


def truth_of(path):
    return os.path.splitext(os.path.basename(path))[0].split("_", 1)[1].replace("_", " ")


def test_bundled_model_names_each_example(tmp_path):
    run = xe.infer(os.path.join(ROOT, "examples"), topk=3)   # a folder, the bundled model, its labels
    assert isinstance(run, collections.abc.Generator)
    rows = list(run)
    assert [row["path"] for row in rows] == EXAMPLES and len(EXAMPLES) >= 4
    for row in rows:
        assert row["error"] is None and len(row["top"]) == 3
        assert row["top"][0]["label"] == truth_of(row["path"]), row
    assert not list(tmp_path.iterdir())                      # no output: it only yields


def test_same_files_as_the_cli(tiny_hf, video_dir, tmp_path):
    labels = "cooking, dancing, surfing"
    for fmt in ("jsonl", "csv", "table"):
        a, b = tmp_path / f"cli.{fmt}", tmp_path / f"api.{fmt}"
        r = cli("infer", video_dir, "--model", tiny_hf, "--labels", labels, "--format", fmt, "-o", a, "--topk", 2)
        assert r.exit_code == 1, r.output                    # the folder has damaged videos
        rows = list(xe.infer([video_dir], str(tiny_hf), LABELS, fmt=fmt, output=b, topk=2))
        assert b.read_text() == a.read_text()
        assert len(rows) == 7 and sum(row["error"] is not None for row in rows) == 4
    # the rows yielded are the lines written
    assert rows_of(tmp_path / "api.jsonl") == list(xe.infer([video_dir], str(tiny_hf), LABELS, topk=2))


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]


def test_output_to_an_open_file_and_json_is_jsonl(tiny, names_dir):
    d, paths = names_dir
    out = io.StringIO()
    rows = list(xe.infer(d, tiny, LABELS, output=out, fmt="json"))
    assert [json.loads(line) for line in out.getvalue().splitlines()] == rows
    assert [row["path"] for row in rows] == paths


def test_resume_as_the_cli(tiny_hf, names_dir, tmp_path):
    d, paths = names_dir
    full = tmp_path / "full.jsonl"
    list(xe.infer(d, str(tiny_hf), LABELS, output=full))
    lines = full.read_text().splitlines(keepends=True)
    killed = "".join(lines[:4]) + lines[4][:10]              # a killed run: 4 answers and half a line
    a, b = tmp_path / "cli.jsonl", tmp_path / "api.jsonl"
    for f in (a, b):
        f.write_text(killed)
        # the killed run's sidecar names it: only then is its cut-off last line repaired
        shutil.copy(f"{full}.meta.json", f"{f}.meta.json")
    answered = [row["path"] for row in rows_of(full)[:4] if row["error"] is None]
    todo = [p for p in paths if p not in answered]            # the failures among the 4 are tried again
    assert 0 < len(answered) < 4
    r = cli("infer", d, "--model", tiny_hf, "--labels", ", ".join(LABELS), "--format", "jsonl", "-o", a, "--resume")
    assert r.exit_code == 1 and f"skipped {len(answered)} already answered" in r.stderr
    run = xe.infer(d, str(tiny_hf), LABELS, output=b, resume=True)
    assert sorted(run.skipped) == answered and run.todo == todo
    assert [row["path"] for row in run] == todo               # only what this run answers is yielded
    assert b.read_text() == a.read_text()
    assert sorted(row["path"] for row in rows_of(b)) == paths
    # a resumed finished run tries the failures again, and only them
    assert [row["path"] for row in xe.infer(d, str(tiny_hf), LABELS, output=b, resume=True)] == \
        [p for p in paths if "bad" in p]


def test_shards_as_the_cli_and_no_torchrun_default(tiny_hf, names_dir, tmp_path, monkeypatch):
    d, paths = names_dir
    for shard in ("1/3", (1, 3)):
        out = tmp_path / "api" / "out.jsonl"
        out.parent.mkdir(exist_ok=True)
        run = xe.infer(d, str(tiny_hf), LABELS, output=out, shard=shard, overwrite=True)   # the 2nd: same file
        assert run.output == str(tmp_path / "api" / "out.shard-1-of-3.jsonl") and run.shard == (1, 3)
        assert [row["path"] for row in run] == paths[1::3]
    r = cli("infer", d, "--model", tiny_hf, "--labels", ", ".join(LABELS), "--format", "jsonl",
            "-o", tmp_path / "out.jsonl", "--shard", "1/3")
    assert r.exit_code in (0, 1), r.output
    name = "out.shard-1-of-3.jsonl"
    assert (tmp_path / name).read_text() == (tmp_path / "api" / name).read_text()
    # torchrun's variables choose the CLI's shard, never the API's (it answers every input)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert [row["path"] for row in xe.infer(d, str(tiny_hf), LABELS)] == paths


def test_window_as_the_cli(tiny_hf, tmp_path):
    clip = write_index_video(tmp_path / "long.mp4", 90, fps=30)      # 3 s
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    inputs = [clip, tmp_path / "junk.mp4"]
    a, b = tmp_path / "cli.jsonl", tmp_path / "api.jsonl"
    r = cli("infer", *inputs, "--model", tiny_hf, "--labels", ", ".join(LABELS), "--window", 1, "--stride", 1,
            "--decoder", "pyav", "-o", a, "--plot", tmp_path / "cli.png")
    assert r.exit_code == 1, r.output
    rows = list(xe.infer(inputs, str(tiny_hf), LABELS, window=1, stride=1, decoder="pyav", output=b,
                         plot=str(tmp_path / "api.png")))
    assert b.read_text() == a.read_text()
    by_name = {os.path.basename(row["path"]): row for row in rows}
    assert by_name["long.mp4"]["error"] is None and len(by_name["long.mp4"]["windows"]) == 3
    assert "junk.mp4" in by_name["junk.mp4"]["error"]
    assert (tmp_path / "api.long.png").stat().st_size > 0


def test_bad_arguments_raise_at_the_call(tiny, names_dir, tmp_path):
    d, _ = names_dir
    with pytest.raises(ValueError, match="resume"):
        xe.infer(d, tiny, LABELS, resume=True)                        # nothing to resume
    with pytest.raises(ValueError, match="fmt"):
        xe.infer(d, tiny, LABELS, fmt="xml")
    with pytest.raises(ValueError, match="window"):
        xe.infer(d, tiny, LABELS, window=2, fmt="csv", output=tmp_path / "x.csv")
    with pytest.raises(ValueError, match="go with window"):
        xe.infer(d, tiny, LABELS, stride=2)
    with pytest.raises(ShardError, match="I/N"):
        xe.infer(d, tiny, LABELS, shard="2/2")
    with pytest.raises(ValueError, match="loaded already"):
        xe.infer(d, tiny, LABELS, device="cpu")
    with pytest.raises(ValueError, match="no labels"):
        xe.infer(d, tiny)                                             # a random model has no label set
    with pytest.raises(ValueError, match="workers"):
        xe.infer(d, tiny, LABELS, workers=0)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("not results\n")
    with pytest.raises(ResultsFileError, match="line 1"):
        xe.infer(d, tiny, LABELS, output=notes, resume=True)
    assert not (tmp_path / "x.csv").exists()


def test_closing_early_stops_and_closes_the_file(tiny, names_dir, tmp_path, monkeypatch):
    d, paths = names_dir
    out = tmp_path / "out.jsonl"
    run = xe.infer(d, tiny, LABELS, output=out, batch_size=2, workers=1)
    assert not out.exists()                                   # nothing is opened before the first row
    first = next(run)
    run.close()
    assert rows_of(out) == [first] and first["path"] == paths[0]
    with pytest.raises(StopIteration):
        next(run)
