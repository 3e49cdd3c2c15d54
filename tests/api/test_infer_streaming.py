"""`xclip-engine infer` over many files: discovery, the bounded decode pipeline, streamed JSON
lines, --resume, --shard (and torchrun's RANK/WORLD_SIZE), --window wiring, flat memory.

Most tests replace the decoder by a fake (engine.video.decoders.read_clip) so that they measure the
pipeline, not FFmpeg; the kill/resume and memory tests run real videos in subprocesses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from click.testing import CliRunner
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine.cli import main
from xclip_engine.engine.io.inputs import discover_inputs
from xclip_engine.engine.io.results import ResultsFileError, parse_shard, read_for_resume, shard_output_path
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.reader import VideoError

LABELS = "cooking, dancing, surfing"


def run(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def fake_clip(path, num_frames, size, views="1x1", decoder="auto", device=None):
    """A stand-in for read_clip: a constant clip whose value depends on the file name; files
    named bad* fail as damaged videos do."""
    name = os.path.basename(path)
    if name.startswith("bad"):
        raise VideoError(path, "fake damage")
    value = (sum(map(ord, name)) % 5 - 2) / 2
    return np.full((1, num_frames, 3, size, size), value, np.float32)


@pytest.fixture
def fake_decoder(monkeypatch):
    monkeypatch.setattr(decoders, "read_clip", fake_clip)
    return fake_clip


@pytest.fixture
def names_dir(tmp_path):
    """12 empty files named like videos (the fake decoder never opens them), 2 of them 'bad'."""
    d = tmp_path / "in"
    d.mkdir()
    names = [f"v{i:02d}.mp4" for i in range(10)] + ["bad_a.mp4", "bad_b.mp4"]
    for n in names:
        (d / n).write_bytes(b"")
    return d, sorted(str(d / n) for n in names)


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]


# ---- discovery -----------------------------------------------------------------------------------

def test_discovery_recursive_sorted_unique_globbed(tmp_path):
    d = tmp_path / "videos"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "empty").mkdir()
    for rel in ["b.mp4", "A.MP4", "notes.txt", "sub/c.webm", "sub/deeper/d.mkv", "sub/e.mp4"]:
        (d / rel).write_bytes(b"")
    os.symlink(d, d / "sub" / "loop")   # a link back up: not followed, so no endless walk
    found = discover_inputs([d / "b.mp4", d, tmp_path / "missing.mp4", d / "sub"])
    expect = sorted([str(d / "A.MP4"), str(d / "b.mp4"), str(d / "sub" / "c.webm"),
                     str(d / "sub" / "deeper" / "d.mkv"), str(d / "sub" / "e.mp4"), str(tmp_path / "missing.mp4")])
    assert found.paths == expect    # sorted, each once (b.mp4 and sub/ were named twice), missing kept
    assert found.errors == {}
    assert discover_inputs([d], ["*.mp4"]).paths == sorted([str(d / "A.MP4"), str(d / "b.mp4"), str(d / "sub/e.mp4")])
    assert discover_inputs([d], ["sub/*/*.mkv"]).paths == [str(d / "sub/deeper/d.mkv")]
    assert discover_inputs([d], ["*.txt", "*.webm"]).paths == sorted([str(d / "notes.txt"), str(d / "sub/c.webm")])
    empty = discover_inputs([d / "empty", d / "b.mp4"], ["*.mov"])
    assert empty.paths == sorted([str(d / "b.mp4"), str(d / "empty")])     # a named file is always read
    assert "'*.mov'" in empty.errors[str(d / "empty")] and "--glob" in empty.errors[str(d / "empty")]


def test_discovery_of_thousands_never_opens_a_file(tmp_path, monkeypatch):
    d = tmp_path / "many"
    for k in range(20):
        (d / f"f{k:02d}").mkdir(parents=True)
        for i in range(150):
            (d / f"f{k:02d}" / f"{i:03d}.mp4").write_bytes(b"")

    def no_probe(*a, **k):
        raise AssertionError("discovery must not open videos")

    monkeypatch.setattr(av, "open", no_probe)
    t0 = time.perf_counter()
    found = discover_inputs([d])
    assert len(found.paths) == 3000 and found.paths == sorted(found.paths)
    assert time.perf_counter() - t0 < 5


def test_cli_empty_folder_and_missing_file_are_answered(tiny_hf, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("infer", tmp_path / "empty", tmp_path / "missing.mp4", "--model", tiny_hf, "--labels", LABELS,
            "--format", "jsonl")
    assert r.exit_code == 1, r.output
    rows = {os.path.basename(row["path"]): row["error"] for row in map(json.loads, r.stdout.splitlines())}
    assert "a folder with no video files" in rows["empty"]
    assert "missing.mp4" in rows["missing.mp4"] and "not found" in rows["missing.mp4"]


# ---- the pipeline --------------------------------------------------------------------------------

class _SlowNet:
    """Wraps the model's network: records when each forward ran and makes it last 80 ms."""

    def __init__(self, net):
        self.net, self.calls = net, []

    @property
    def config(self):
        return self.net.config

    def __call__(self, *a):
        t0 = time.perf_counter()
        time.sleep(0.08)
        out = self.net(*a)
        self.calls.append((t0, time.perf_counter()))
        return out

    def encode_text(self, ids):
        return self.net.encode_text(ids)


def test_pipeline_in_order_bounded_and_overlapped(tiny_hf, monkeypatch):
    model = xe.load(str(tiny_hf))
    starts, lock = [], threading.Lock()

    def slow_clip(path, *a, **k):
        with lock:
            starts.append(time.perf_counter())
        time.sleep(0.02)
        return fake_clip(path, *a, **k)

    monkeypatch.setattr(decoders, "read_clip", slow_clip)
    names = [f"/x/{'bad' if i % 7 == 3 else 'v'}{i:03d}.mp4" for i in range(24)]
    pulled = []

    def source():                       # a lazy input list: how far ahead does the pipeline read?
        for n in names:
            pulled.append(n)
            yield n

    batch, workers = 4, 2
    model.net = _SlowNet(model.net)
    timings = {}
    preds, ahead = [], []
    for p in model.classify_iter(source(), ["a", "b", "c"], topk=2, batch_size=batch, workers=workers,
                                 timings=timings):
        ahead.append(len(pulled) - len(preds))
        preds.append(p)
    assert [p.path for p in preds] == names                       # input order, every input once
    assert all((p.error is None) == ("bad" not in p.path) for p in preds)
    # bounded, so memory stays flat: the next batch + workers decoding ahead, plus the batch being
    # answered (batch decoded clips and the failures among them: here at most one, every 7th is bad)
    assert max(ahead) <= 2 * batch + workers + 1
    # the same clip gets the same answer wherever it sits in a batch
    alone = {n: model.classify([n], ["a", "b", "c"], topk=2)[0].top for n in names[:3]}
    for p in preds[:3]:
        assert [lab for lab, _ in p.top] == [lab for lab, _ in alone[p.path]]
    # decoding of the next batch ran while the model was busy with this one
    overlapped = sum(any(a < s < b for s in starts) for a, b in model.net.calls)
    assert overlapped >= len(model.net.calls) // 2, (model.net.calls, starts)
    assert timings["videos"] == 24 - sum("bad" in n for n in names) and timings["model_s"] > 0


def test_pipeline_stops_promptly_when_the_consumer_does(tiny_hf, monkeypatch):
    model = xe.load(str(tiny_hf))
    decoded = []
    monkeypatch.setattr(decoders, "read_clip", lambda p, *a, **k: decoded.append(p) or fake_clip(p, *a, **k))
    it = model.classify_iter((f"/x/v{i}.mp4" for i in range(10_000)), ["a", "b"], batch_size=2, workers=2)
    next(it)
    it.close()
    assert len(decoded) <= 2 * 2 + 2 + 2   # queued decodes are cancelled, the rest never submitted


def test_bad_arguments_are_errors_not_per_video_failures(tiny_hf):
    model = xe.load(str(tiny_hf))
    with pytest.raises(ValueError, match="views"):
        model.classify_iter(["/x/a.mp4"], ["a"], views="2x2x2")
    with pytest.raises(ValueError, match="decoder 'ffmpeg'"):
        model.classify_iter(["/x/a.mp4"], ["a"], decoder="ffmpeg")
    with pytest.raises(ValueError, match="workers"):
        model.classify_iter(["/x/a.mp4"], ["a"], workers=0)


# ---- JSON lines output and --resume --------------------------------------------------------------

def test_jsonl_lines_are_flushed_as_they_come(tiny_hf, names_dir, tmp_path, monkeypatch):
    d, paths = names_dir
    out = tmp_path / "out.jsonl"
    seen = {}

    def watching_clip(path, *a, **k):
        if path == paths[-1]:           # the last decode: earlier answers must already be on disk
            seen["lines"] = len(out.read_text().splitlines()) if out.exists() else 0
        return fake_clip(path, *a, **k)

    monkeypatch.setattr(decoders, "read_clip", watching_clip)
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", out,
            "--batch-size", "2", "--workers", "1")
    assert r.exit_code == 1, r.output
    assert seen["lines"] >= len(paths) - 7   # at most a batch + the prefetch window behind
    rows = rows_of(out)
    assert [row["path"] for row in rows] == paths
    assert "videos 12, answered 10, failed 2" in r.stderr and "videos/s" in r.stderr


def test_json_and_jsonl_are_the_same_format(tiny_hf, names_dir, fake_decoder):
    d, _ = names_dir
    a = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "json")
    b = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl")
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 12


def test_resume_after_a_cut_off_run_answers_each_input_once(tiny_hf, names_dir, tmp_path, monkeypatch):
    d, paths = names_dir
    monkeypatch.setattr(decoders, "read_clip", fake_clip)
    full = tmp_path / "full.jsonl"
    assert run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", full).exit_code == 1
    reference = {row["path"]: row for row in rows_of(full)}
    lines = full.read_text().splitlines(keepends=True)

    # a killed run: the first 5 answers, a failure that will succeed now, and half a line
    out = tmp_path / "out.jsonl"
    failed_before = json.dumps({"path": paths[6], "top": [], "error": f"{paths[6]}: busy network share"}) + "\n"
    out.write_text("".join(lines[:5]) + failed_before + lines[7][: len(lines[7]) // 2])
    shutil.copy(f"{full}.meta.json", f"{out}.meta.json")   # the same run: its cut-off line is repaired
    decoded = []
    monkeypatch.setattr(decoders, "read_clip", lambda p, *a, **k: decoded.append(p) or fake_clip(p, *a, **k))
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", out, "--resume")
    assert r.exit_code == 1, r.output        # the two bad files still fail
    answered = {row["path"] for row in rows_of(full)[:5] if row["error"] is None}
    assert sorted(decoded) == sorted(set(paths) - answered)   # failures are tried again
    rows = rows_of(out)
    assert sorted(row["path"] for row in rows) == paths      # each input exactly once
    for row in rows:                                          # and answered as in one run
        ref = reference[row["path"]]
        assert row["error"] == ref["error"] and [t["label"] for t in row["top"]] == [t["label"] for t in ref["top"]]
        assert [t["score"] for t in row["top"]] == pytest.approx([t["score"] for t in ref["top"]], abs=1e-5)
    assert f"skipped {len(answered)} already answered" in r.stderr

    # resuming a finished run does nothing but retry the failures
    decoded.clear()
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", out, "--resume")
    assert sorted(decoded) == [p for p in paths if "bad" in os.path.basename(p)]
    assert sorted(row["path"] for row in rows_of(out)) == paths


def test_resume_refuses_files_that_are_not_results(tiny_hf, names_dir, tmp_path, fake_decoder):
    d, _ = names_dir
    other = tmp_path / "notes.jsonl"
    other.write_text('{"path": "a.mp4", "top": [], "error": null}\nsomething else\n{"path": "b.mp4"}\n')
    before = other.read_text()
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", other, "--resume")
    assert r.exit_code == 2 and "line 2" in r.stderr and str(other) in r.stderr
    assert other.read_text() == before                       # untouched
    for args in (["--resume"], ["--resume", "-o", tmp_path / "x.csv", "--format", "csv"]):
        r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, *args)
        assert r.exit_code == 2 and "--resume continues a JSON lines file" in r.stderr
    fresh = tmp_path / "new.jsonl"                            # nothing to resume: a normal run
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", fresh, "--resume")
    assert r.exit_code == 1 and len(rows_of(fresh)) == 12


def test_read_for_resume_keeps_complete_last_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"path": "a.mp4", "top": [], "error": null}\n{"path": "b.mp4", "top": [], "error": null}')
    assert read_for_resume(str(f), ["a.mp4", "b.mp4", "c.mp4"]) == {"a.mp4", "b.mp4"}
    assert f.read_text().endswith("}\n")    # the newline the killed run did not write is added
    f.write_text("[1, 2]\n")
    with pytest.raises(ResultsFileError, match="line 1"):
        read_for_resume(str(f), ["a.mp4"])


def _write_clips(folder, n):
    """n hard links of one tiny clip (32x32, 8 frames): many inputs, one encode."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "src.mp4.orig"
    with av.open(str(src), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=30)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for k in range(8):
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * k, np.uint8), format="rgb24")))
        out.mux(s.encode())
    for i in range(n):
        os.link(src, folder / f"clip{i:04d}.mp4")
    return sorted(str(folder / f"clip{i:04d}.mp4") for i in range(n))


_SLOW_CLI = ("import sys, time; import xclip_engine.engine.video.decoders as d; f = d.read_clip; "
             "d.read_clip = lambda *a, **k: (time.sleep(0.1), f(*a, **k))[1]; "
             "from xclip_engine.engine.cli import main; main(sys.argv[1:])")


def test_killed_run_resumed_answers_each_input_once(tmp_path):
    paths = _write_clips(tmp_path / "clips", 24)
    out = tmp_path / "out.jsonl"
    args = ["infer", str(tmp_path / "clips"), "--labels", "a, b", "--format", "jsonl", "-o", str(out),
            "--batch-size", "2", "--workers", "1", "--decoder", "pyav"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(rows_of_tolerant(out))
    assert 6 <= done_before < 24, "the run should have been killed half way"
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    assert sorted(row["path"] for row in rows) == paths and all(row["error"] is None for row in rows)
    assert f"videos {24 - done_before}," in r.stderr


def rows_of_tolerant(path):
    """Complete lines only (a killed writer may leave half a line)."""
    out = []
    for line in open(path, encoding="utf-8").read().split("\n")[:-1]:
        out.append(json.loads(line))
    return out


# ---- shards ----------------------------------------------------------------------------------------

def test_two_shards_cover_every_input_once(tiny_hf, names_dir, tmp_path, fake_decoder):
    d, paths = names_dir
    out = tmp_path / "out.jsonl"
    for i in (0, 1):
        r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", out,
                "--shard", f"{i}/2")
        assert r.exit_code == 1 and "shard" in r.stderr
    assert not out.exists()
    shards = [rows_of(tmp_path / f"out.shard-{i}-of-2.jsonl") for i in (0, 1)]
    assert [row["path"] for row in shards[0]] == paths[0::2]
    assert [row["path"] for row in shards[1]] == paths[1::2]
    assert sorted(row["path"] for rows in shards for row in rows) == paths


def test_torchrun_environment_picks_the_shard(tiny_hf, names_dir, tmp_path, fake_decoder):
    d, paths = names_dir
    env = {"RANK": "1", "WORLD_SIZE": "3"}
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "-o", tmp_path / "o.jsonl",
            env=env)
    assert r.exit_code in (0, 1), r.output
    assert [row["path"] for row in rows_of(tmp_path / "o.shard-1-of-3.jsonl")] == paths[1::3]
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--format", "jsonl", "--shard", "0/1", env=env)
    assert len(r.stdout.splitlines()) == 12       # an explicit --shard wins over the environment
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, env={"RANK": "3", "WORLD_SIZE": "2"})
    assert r.exit_code == 2 and "RANK" in r.stderr and "WORLD_SIZE" in r.stderr


@pytest.mark.parametrize("value", ["2/2", "-1/2", "a/b", "1", "0/0", "1/2/3", ""])
def test_bad_shard_values_are_usage_errors(tiny_hf, names_dir, value):
    d, _ = names_dir
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--shard", value)
    assert r.exit_code == 2 and f"--shard {value!r}" in r.stderr and "I/N" in r.stderr, r.stderr


def test_shard_helpers():
    assert parse_shard(" 3/4 ") == (3, 4)
    assert shard_output_path("res/out.jsonl", 1, 4) == os.path.join("res", "out.shard-1-of-4.jsonl")
    assert shard_output_path("out", 0, 2) == "out.shard-0-of-2"
    assert shard_output_path("out.jsonl", 0, 1) == "out.jsonl"


# ---- options wired to other modules ------------------------------------------------------------

def test_decoder_dali_without_dali_is_a_usage_error(tiny_hf, names_dir, monkeypatch):
    monkeypatch.setattr(decoders, "dali_installed", lambda: False)
    d, _ = names_dir
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, "--decoder", "dali")
    assert r.exit_code == 2 and "DALI" in r.stderr


def test_window_writes_a_timeline_per_video_and_plots(tmp_path):
    clip = write_index_video(tmp_path / "long.mp4", 90, fps=30)      # 3 s
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    png = tmp_path / "plot.png"
    r = run("infer", clip, tmp_path / "junk.mp4", "--labels", LABELS, "--window", "1", "--stride", "1",
            "--plot", png, "--decoder", "pyav")
    assert r.exit_code == 1, r.output
    rows = {os.path.basename(row["path"]): row for row in map(json.loads, r.stdout.splitlines())}
    assert rows["long.mp4"]["error"] is None and len(rows["long.mp4"]["windows"]) == 3
    assert "junk.mp4" in rows["junk.mp4"]["error"]
    assert (tmp_path / "plot.long.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--stride", "1"], "go with --window"),
    (["--plot", "x.png"], "go with --window"),
    (["--window", "2", "--format", "csv"], "use --format jsonl"),
    (["--window", "2", "--views", "4x3"], "one view"),
    (["--window", "0"], "--window"),
])
def test_window_usage_errors(tiny_hf, names_dir, args, message):
    d, _ = names_dir
    r = run("infer", d, "--model", tiny_hf, "--labels", LABELS, *args)
    assert r.exit_code == 2 and message in r.stderr, r.output


# ---- memory ----------------------------------------------------------------------------------------

_MEASURE = ("import resource, sys; from xclip_engine.engine.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def _peak_rss(folder, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # the decode threads and torch share 2 cores here
    r = subprocess.run([sys.executable, "-c", _MEASURE, "infer", str(folder), "--labels", "a, b", "--format",
                        "jsonl", "-o", str(out), "--decoder", "pyav"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(rows_of(out)) == len(os.listdir(folder)) - 1
    return int(r.stdout.split("MAXRSS")[-1])


def test_peak_memory_is_flat_in_the_number_of_videos(tmp_path):
    _write_clips(tmp_path / "fifty", 50)
    _write_clips(tmp_path / "five_hundred", 500)
    small = _peak_rss(tmp_path / "fifty", tmp_path / "a.jsonl")
    large = _peak_rss(tmp_path / "five_hundred", tmp_path / "b.jsonl")
    assert large <= 1.10 * small, f"peak RSS {large} KiB for 500 clips vs {small} KiB for 50"

