"""The --output file is never destroyed and never silently wrong (engine/io/output.py), through
`xe.infer` and through `xclip-engine infer`: an input is not overwritten, an existing file is not
replaced unasked, one writer at a time, --resume only continues the same run's file, and the
read-ahead stays bounded whatever --workers says.

The decoder is a fake (only rows and files matter here), the model the tiny random tiny_hf."""

import json
import os
import shutil
import tempfile
import threading
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xclip_engine as xe
from xclip_engine.engine import pipeline
from xclip_engine.engine.cli import main
from xclip_engine.engine.decode_ahead import MAX_DECODE_THREADS, decode_threads
from xclip_engine.engine.io.results import ResultsFileError, jsonl_line
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.reader import VideoError

LABELS = ["cooking", "dancing", "surfing"]


def fake_clip(path, num_frames, size, views="1x1", decoder="auto", device=None):
    """A constant clip whose value depends on the file name; files named bad* fail."""
    name = os.path.basename(path)
    if name.startswith("bad"):
        raise VideoError(path, "fake damage")
    return np.full((1, num_frames, 3, size, size), (sum(map(ord, name)) % 5 - 2) / 2, np.float32)


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    return xe.load(str(tiny_hf))


def make_inputs(folder, n=5):
    """n empty files named like videos (the fake decoder never opens them), the last one 'bad'."""
    os.makedirs(folder, exist_ok=True)
    names = [f"v{i}.mp4" for i in range(n - 1)] + ["bad.mp4"]
    for name in names:
        open(os.path.join(folder, name), "wb").close()
    return sorted(os.path.join(folder, name) for name in names)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(decoders, "read_clip", fake_clip)
    return make_inputs(str(tmp_path / "in"))


def cli(tiny_hf, *args):
    return CliRunner().invoke(main, ["infer", *map(str, args), "--model", str(tiny_hf), "--labels",
                                     ", ".join(LABELS), "--format", "jsonl"], catch_exceptions=False)


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]


def answered_once(path, paths):
    text = open(path, encoding="utf-8").read()
    assert text.endswith("\n")
    assert sorted(row["path"] for row in rows_of(path)) == paths
    return True


def leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith((".tmp", ".lock"))]


# ---- outputs that never destroy ------------------------------------------------------------------

def test_output_that_is_an_input_is_refused(tiny, tiny_hf, inputs, tmp_path):
    video = inputs[0]
    with open(video, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42 a video")
    before = open(video, "rb").read()
    with pytest.raises(ResultsFileError, match="is the input"):
        xe.infer(inputs, tiny, LABELS, output=video)
    link = tmp_path / "link.mp4"
    os.symlink(video, link)                      # the same file by another name
    with pytest.raises(ResultsFileError, match="is the input"):
        xe.infer(inputs, tiny, LABELS, output=link, overwrite=True)
    r = cli(tiny_hf, inputs[0], inputs[1], "-o", video, "--overwrite")
    assert r.exit_code == 2 and video in r.stderr and "is the input" in r.stderr, r.output
    assert open(video, "rb").read() == before and not leftovers(os.path.dirname(video))


def test_existing_output_needs_resume_or_overwrite(tiny, tiny_hf, inputs, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not results")
    with pytest.raises(ResultsFileError, match="exists already.*--resume.*--overwrite"):
        xe.infer(inputs, tiny, LABELS, output=notes)
    r = cli(tiny_hf, *inputs, "-o", notes)
    assert r.exit_code == 2 and str(notes) in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert notes.read_text() == "my notes, not results" and not leftovers(tmp_path)
    empty = tmp_path / "empty.jsonl"             # an empty file holds nothing to lose
    empty.touch()
    assert len(list(xe.infer(inputs, tiny, LABELS, output=empty))) == len(inputs)
    assert answered_once(empty, inputs)


def test_overwrite_replaces_and_only_a_complete_run_does(tiny, tiny_hf, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    run = xe.infer(inputs, tiny, LABELS, output=out, overwrite=True)
    next(run)
    run.close()                                   # stopped early: the old file stays, no temp file
    assert out.read_text() == "old\n" and not leftovers(tmp_path)
    assert len(list(xe.infer(inputs, tiny, LABELS, output=out, overwrite=True))) == len(inputs)
    assert answered_once(out, inputs) and not leftovers(tmp_path)
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["topk"] == 5
    out.write_text("old again\n")
    r = cli(tiny_hf, *inputs, "-o", out, "--overwrite")
    assert r.exit_code == 1, r.output             # the bad input
    assert answered_once(out, inputs) and not leftovers(tmp_path)
    r = cli(tiny_hf, *inputs, "-o", out, "--overwrite", "--resume")
    assert r.exit_code == 2 and "one of them" in r.stderr


def test_a_second_writer_fails_at_once(tiny, tiny_hf, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    first = xe.infer(inputs, tiny, LABELS, output=out)    # holds the lock from the call on
    with pytest.raises(ResultsFileError, match="another run") as e:
        xe.infer(inputs, tiny, LABELS, output=out, resume=True)
    assert str(out) in str(e.value) and str(os.getpid()) in str(e.value)
    r = cli(tiny_hf, *inputs, "-o", out, "--resume")
    assert r.exit_code == 2 and "being written by another run" in r.stderr and str(out) in r.stderr
    assert len(list(first)) == len(inputs)               # the first run is not disturbed
    assert answered_once(out, inputs) and not leftovers(tmp_path)
    r = cli(tiny_hf, *inputs, "-o", out, "--resume")      # after it: free again
    assert r.exit_code == 1 and "skipped 4 already answered" in r.stderr, r.output


# ---- resume that knows what it resumes ----------------------------------------------------------

def test_resume_of_another_run_is_refused_naming_the_field(tiny, tiny_hf, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    list(xe.infer(inputs, tiny, LABELS, output=out, topk=2))
    before = out.read_bytes()
    with pytest.raises(ResultsFileError, match="labels_sha256"):
        xe.infer(inputs, tiny, ["a", "b"], output=out, topk=2, resume=True)
    with pytest.raises(ResultsFileError, match="topk: 2 there, 3 now"):
        xe.infer(inputs, tiny, LABELS, output=out, topk=3, resume=True)
    r = cli(tiny_hf, *inputs, "-o", out, "--resume", "--topk", 3)
    assert r.exit_code == 2 and "topk" in r.stderr and str(out) in r.stderr, r.output
    r = CliRunner().invoke(main, ["infer", *inputs, "--model", str(tiny_hf), "--labels", "a, b", "--topk", "2",
                                  "--format", "jsonl", "-o", str(out), "--resume"], catch_exceptions=False)
    assert r.exit_code == 2 and "labels_sha256" in r.stderr
    assert out.read_bytes() == before and not leftovers(tmp_path)
    assert list(xe.infer(inputs, tiny, LABELS, output=out, topk=2, resume=True)) != []   # the same run may


@pytest.mark.parametrize("content", [b"hello", b'{"path": "x.mp4"}', b"my notes\nline two"])
def test_resume_on_a_foreign_file_leaves_it_byte_identical(tiny, tiny_hf, inputs, tmp_path, content):
    f = tmp_path / "f"
    f.write_bytes(content)
    with pytest.raises(ResultsFileError, match="not a result line"):
        xe.infer(inputs, tiny, LABELS, output=f, resume=True)
    r = cli(tiny_hf, *inputs, "-o", f, "--resume")
    assert r.exit_code == 2 and str(f) in r.stderr and "not a result line" in r.stderr, r.output
    assert f.read_bytes() == content and sorted(os.listdir(tmp_path)) == ["f", "in"]


def test_our_cut_off_last_line_is_repaired(tiny, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    list(xe.infer(inputs, tiny, LABELS, output=out))
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:9])          # a killed run's half line
    run = xe.infer(inputs, tiny, LABELS, output=out, resume=True)
    assert run.skipped == {inputs[1]} and len(list(run)) == len(inputs) - 1   # bad.mp4 (first) is retried
    assert answered_once(out, inputs)


# ---- bounded read-ahead ----------------------------------------------------------------------------

def test_workers_1000_is_bounded(tiny, tiny_hf, tmp_path, monkeypatch):
    paths = make_inputs(str(tmp_path / "many"), 120)
    decoded, threads = [], set()

    def counting_clip(path, *a, **k):
        decoded.append(path)
        threads.add(threading.current_thread().name)
        return fake_clip(path, *a, **k)

    monkeypatch.setattr(decoders, "read_clip", counting_clip)
    assert decode_threads(1000) <= min(MAX_DECODE_THREADS, 4 * os.cpu_count()) and decode_threads(1) == 1
    ahead, rows = [], 0
    for _ in xe.infer(paths, tiny, LABELS, batch_size=2, workers=1000):
        rows += 1
        ahead.append(len(decoded) - rows)
    assert rows == len(paths) and max(ahead) <= 2 * 2 + decode_threads(1000) + 1, max(ahead)
    assert len(threads) <= decode_threads(1000)
    threads.clear()
    r = cli(tiny_hf, *paths[:20], "--workers", 1000, "--batch-size", 2)
    assert r.exit_code == 1 and len(threads) <= decode_threads(1000)
    for bad in (0, -1, 2.5, "4"):
        with pytest.raises(ValueError, match="workers"):
            xe.infer(paths, tiny, LABELS, workers=bad)
    assert "32" in CliRunner().invoke(main, ["infer", "--help"]).stdout


# ---- property: whatever happens, nothing lost, nothing destroyed ---------------------------------

class Killed(BaseException):
    """A kill in the middle of writing a line (what SIGKILL leaves: half a line on disk)."""


def _killing_writer(after):
    real = pipeline.row_writer

    def make(fmt, out):
        write, count = real(fmt, out), [0]

        def w(row):
            if count[0] == after:
                line = jsonl_line(row)
                out.write(line[: len(line) // 2])
                out.flush()
                raise Killed
            count[0] += 1
            write(row)
        return w
    return make


FLAGS = st.sampled_from([{}, {"resume": True}, {"overwrite": True}])
OPS = st.one_of(st.tuples(st.just("run"), FLAGS), st.tuples(st.just("kill"), FLAGS, st.integers(0, 4)),
                st.tuples(st.just("concurrent"), FLAGS))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=5))
def test_any_sequence_of_runs_kills_and_resumes(tiny, ops):
    folder = tempfile.mkdtemp()
    try:
        with mock.patch.object(decoders, "read_clip", fake_clip):
            _play(tiny, folder, ops)
    finally:
        shutil.rmtree(folder)


def _play(tiny, folder, ops):
    paths = make_inputs(os.path.join(folder, "in"))
    out = os.path.join(folder, "out.jsonl")

    def snapshot():
        return open(out, "rb").read() if os.path.exists(out) else None

    def start(flags):
        return xe.infer(paths, tiny, LABELS, output=out, batch_size=2, workers=1, **flags)

    for op in ops:
        before, flags = snapshot(), op[1]
        existed = bool(before)
        if existed and not flags:                          # an existing file is never replaced unasked
            with pytest.raises(ResultsFileError, match="exists already"):
                start(flags)
            assert snapshot() == before
            continue
        if op[0] == "run":
            list(start(flags))
            assert answered_once(out, paths)
        elif op[0] == "kill":
            with mock.patch.object(pipeline, "row_writer", _killing_writer(op[2])):
                run = start(flags)
                try:
                    list(run)
                    finished = True
                except Killed:
                    finished = False
            if finished:
                assert answered_once(out, paths)
            elif flags.get("overwrite") and existed:
                assert snapshot() == before                # the old file stays until the new one is whole
            else:                                          # complete lines, each input at most once
                done = [json.loads(line) for line in open(out, encoding="utf-8").read().split("\n")[:-1]]
                assert len({row["path"] for row in done}) == len(done) and {r["path"] for r in done} <= set(paths)
        else:
            first = start(flags)
            with pytest.raises(ResultsFileError, match="another run"):
                start({"resume": True})
            list(first)
            assert answered_once(out, paths)
        assert not leftovers(folder)
    list(start({"resume": True}))                          # a last resume always completes the file
    assert answered_once(out, paths)


# ---- an output path that cannot be a results file: refused before the model loads -------------------
def test_output_that_is_a_folder_or_in_a_missing_folder_is_refused_before_loading(tiny_hf, inputs, tmp_path,
                                                                                  monkeypatch):
    from xclip_engine.engine import api

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(api, "load", no_load)
    r = cli(tiny_hf, *inputs, "-o", tmp_path)
    assert r.exit_code == 2 and "is a folder" in r.stderr, r.output
    r = cli(tiny_hf, *inputs, "-o", tmp_path / "missing" / "out.jsonl")
    assert r.exit_code == 2 and "does not exist" in r.stderr, r.output
    (tmp_path / "old.jsonl").write_text("keep me\n")
    r = cli(tiny_hf, *inputs, "-o", tmp_path / "old.jsonl")
    assert r.exit_code == 2 and "--overwrite" in r.stderr and (tmp_path / "old.jsonl").read_text() == "keep me\n"
    monkeypatch.undo()
    with pytest.raises(ResultsFileError, match="is a folder"):
        xe.infer(inputs, str(tiny_hf), LABELS, output=str(tmp_path))
    with pytest.raises(ResultsFileError, match="does not exist"):
        xe.infer(inputs, str(tiny_hf), LABELS, output=str(tmp_path / "missing" / "out.jsonl"))
