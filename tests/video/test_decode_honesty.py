"""Decode honesty: a truncated but decodable video is answered from the frames that survived, and
its result says so (a "warning" naming both counts, one line on stderr); healthy videos say nothing.

The truncated clips keep their MP4 index in front (faststart) and lose the back of their frame
data, so the header still declares every frame (tests/video_factory.py write_truncated_mp4)."""

import json
import sys
import warnings

import av
import pytest
from click.testing import CliRunner
from video_factory import write_index_video, write_truncated_mp4

import xclip_engine as xe
from xclip_engine.engine.cli import main
from xclip_engine.engine.io.results import Prediction
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.dali import plan_clip
from xclip_engine.engine.video.reader import (
    DecodeStats,
    TruncatedVideoWarning,
    collect_stats,
    read_frames,
    read_video,
)

DECLARED = 100
LABELS = ["cooking", "dancing", "surfing"]


def decodable(path) -> int:
    """Frames a plain FFmpeg pass gets out of the file (the truth the answer should rest on)."""
    n = 0
    with av.open(str(path)) as c:
        try:
            for pkt in c.demux(c.streams.video[0]):
                try:
                    n += len(pkt.decode())
                except av.FFmpegError:
                    pass
        except av.FFmpegError:
            pass
    return n


@pytest.fixture(scope="module")
def honesty_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("honesty")
    return {
        # keep=0.5: the last packets' data is gone and the survivors need a re-count (27 of 100)
        "cut_half": write_truncated_mp4(d / "cut_half.mp4", DECLARED, keep=0.5, faststart=True),
        # keep=0.8: every packet the demuxer still finds decodes (the fast, exact path)
        "cut_most": write_truncated_mp4(d / "cut_most.mp4", DECLARED, keep=0.8, faststart=True),
        "h264": write_index_video(d / "ok.mp4", 40, "h264"),
        "vp9": write_index_video(d / "ok.webm", 40, "vp9"),
        "mjpeg": write_index_video(d / "ok.mkv", 40, "mjpeg"),
    }


def _counts(text: str) -> tuple[int, int]:
    words = text.split("decoded ", 1)[1].split()
    return int(words[0]), int(words[3])    # "decoded N of the D frames ..."


# ---- reader ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cut_half", "cut_most"])
def test_reader_counts_a_truncated_file(honesty_clips, name):
    path = honesty_clips[name]
    with av.open(path) as c:
        assert c.streams.video[0].frames == DECLARED       # the header still claims them all
    truth = decodable(path)
    assert 0 < truth < DECLARED
    stats = DecodeStats()
    read_video(path, 8, size=32, stats=stats)
    assert (stats.frames_in_file, stats.frames_declared) == (truth, DECLARED)
    msg = stats.warning(path)
    assert msg.startswith(f"{path}: ") and _counts(msg) == (truth, DECLARED) and "truncated" in msg
    # read_frames scans the same way: the declared count is there without a re-count
    frames_stats = DecodeStats()
    read_frames(path, [0], stats=frames_stats)
    assert frames_stats.frames_declared == DECLARED


@pytest.mark.parametrize("name", ["h264", "vp9", "mjpeg"])
def test_healthy_files_declare_what_they_hold(honesty_clips, name):
    stats = DecodeStats()
    read_video(honesty_clips[name], 8, size=32, views="2x1", stats=stats)
    assert stats.frames_declared == stats.frames_in_file == 40
    assert stats.warning(honesty_clips[name]) is None


def test_read_clip_and_dali_planner_carry_the_counts(honesty_clips):
    path = honesty_clips["cut_most"]
    truth = decodable(path)
    stats = DecodeStats()
    decoders.read_clip(path, 8, 32, decoder="pyav", stats=stats)
    assert _counts(stats.warning(path)) == (truth, DECLARED)
    # DALI samples its indices from the same PyAV scan (plan_clip), so the counts come with them;
    # planning needs no DALI, only PyAV
    planned = DecodeStats()
    with collect_stats(planned):
        plan = plan_clip(path, 8, 32)
    assert max(plan.frames) < truth and _counts(planned.warning(path)) == (truth, DECLARED)
    # outside the block nothing is collected any more
    plan_clip(path, 8, 32)
    assert planned.packets_scanned == truth


# ---- rows: xe.infer, Model.classify, the CLI ------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_hf):
    return xe.load(str(tiny_hf))


def test_infer_rows_carry_the_warning_once(honesty_clips, tiny):
    paths = [honesty_clips[n] for n in ("cut_half", "h264", "cut_most")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        rows = list(xe.infer(paths, tiny, LABELS, topk=2, decoder="pyav"))
    by_path = {r["path"]: r for r in rows}
    for name in ("cut_half", "cut_most"):
        row = by_path[honesty_clips[name]]
        assert row["error"] is None and len(row["top"]) == 2          # still answered
        assert _counts(row["warning"]) == (decodable(honesty_clips[name]), DECLARED)
    assert set(by_path[honesty_clips["h264"]]) == {"path", "top", "error"}   # healthy: unchanged keys
    said = [str(w.message) for w in caught if issubclass(w.category, TruncatedVideoWarning)]
    assert sorted(said) == sorted(by_path[honesty_clips[n]]["warning"] for n in ("cut_half", "cut_most"))


def test_model_classify_predictions_carry_it(honesty_clips, tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedVideoWarning)
        preds = tiny.classify([honesty_clips["cut_most"], honesty_clips["vp9"]], LABELS, topk=1)
    assert _counts(preds[0].warning) == (decodable(honesty_clips["cut_most"]), DECLARED)
    assert preds[1].warning is None and "warning" not in preds[1].to_dict()
    assert preds[0].to_dict()["warning"] == preds[0].warning


def test_prediction_row_keys():
    assert Prediction("a.mp4", [("x", 0.5)]).to_dict() == {"path": "a.mp4", "top": [{"label": "x", "score": 0.5}],
                                                          "error": None}
    assert Prediction("a.mp4", warning="w").to_dict()["warning"] == "w"


def test_window_timelines_carry_it(honesty_clips, tiny):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        rows = list(xe.infer([honesty_clips["cut_most"], honesty_clips["h264"]], tiny, LABELS, window=0.5,
                             decoder="pyav"))
    cut, ok = rows
    assert cut["error"] is None and cut["windows"]
    assert _counts(cut["warning"]) == (decodable(honesty_clips["cut_most"]), DECLARED)
    assert ok["error"] is None and "warning" not in ok
    assert [str(w.message) for w in caught if issubclass(w.category, TruncatedVideoWarning)] == [cut["warning"]]


def test_cli_row_and_one_stderr_line(honesty_clips, tiny_hf):
    def to_stderr(message, category, filename, lineno, file=None, line=None):
        # what Python does outside pytest (which records warnings instead of printing them)
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    cut, ok = honesty_clips["cut_half"], honesty_clips["h264"]
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = to_stderr
        r = CliRunner().invoke(main, ["infer", cut, ok, "--model", str(tiny_hf), "--labels", ", ".join(LABELS),
                                      "--format", "jsonl", "--decoder", "pyav"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert _counts(rows[cut]["warning"]) == (decodable(cut), DECLARED)
    assert "warning" not in rows[ok]
    lines = [ln for ln in r.stderr.splitlines() if "frames the container declares" in ln]
    assert len(lines) == 1 and cut in lines[0] and f"of the {DECLARED} frames" in lines[0]
