"""Sliding-window classification of long videos and its plot."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine.video.timeline import classify_windows, plot_timeline, window_bounds, window_indices

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"   # the bundled model's example clips


def test_window_bounds():
    assert window_bounds(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_bounds(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 9)]   # the last one ends at the end
    assert window_bounds(3, 10, 1) == [(0, 3)]                          # longer than the video: one
    assert window_bounds(10, 1, 4) == [(0, 1), (4, 5), (8, 9)]          # stride > window: gaps
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match="window must be a number of seconds > 0"):
            window_bounds(10, bad, 1)
        with pytest.raises(ValueError, match="stride must be a number of seconds > 0"):
            window_bounds(10, 1, bad)


def test_window_indices_stay_inside_the_window():
    times = np.arange(90) / 30.0                      # 3 s at 30 fps
    idx = window_indices(times, 1.0, 2.0, 8)
    assert idx == [30 + i for i in (1, 5, 9, 13, 16, 20, 24, 28)]   # TSN over frames 30..59
    assert all(1.0 <= times[i] < 2.0 for i in idx)
    assert window_indices(times, 2.99, 3.0, 4) == [89] * 4           # no frame starts inside: the one shown


@pytest.fixture(scope="module")
def tiny_model(tiny_hf):
    return xe.load(tiny_hf)   # 4 frames, 32 px, random weights


def test_classify_windows_structure_and_plot(tiny_model, tmp_path):
    clip = write_index_video(tmp_path / "long.mp4", 90, "h264", size=(64, 48), fps=30)   # 3.0 s
    labels = ["cooking", "dancing", "surfing"]
    tl = classify_windows(tiny_model, clip, labels, window=1.0, stride=0.5, topk=2, decoder="pyav")
    assert tl["path"] == clip and tl["labels"] == labels and tl["window"] == 1.0 and tl["stride"] == 0.5
    assert tl["duration"] == pytest.approx(3.0)
    assert [(w["start"], w["end"]) for w in tl["windows"]] == [(0, 1), (0.5, 1.5), (1, 2), (1.5, 2.5), (2, 3)]
    for w in tl["windows"]:
        assert len(w["scores"]) == 3 and sum(w["scores"]) == pytest.approx(1, abs=1e-5)
        assert len(w["top"]) == 2 and w["top"][0][1] == max(w["scores"])
    json.dumps(tl)   # plain types only: the CLI writes it as JSON
    png = tmp_path / "plots" / "timeline.png"
    plot_timeline(tl, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_window_equals_classifying_the_whole_video(tiny_model, tmp_path):
    clip = write_index_video(tmp_path / "short.mp4", 20, "h264", size=(64, 48), fps=30)
    tl = classify_windows(tiny_model, clip, ["a", "b"], window=60, stride=60, decoder="pyav")
    assert len(tl["windows"]) == 1
    x = xe.read_video(clip, num_frames=4, size=32)
    want = tiny_model.logits(x, ["a", "b"]).softmax(-1)[0].tolist()
    assert tl["windows"][0]["scores"] == pytest.approx(want, abs=1e-5)


def test_classify_windows_bad_input(tiny_model, tmp_path):
    clip = write_index_video(tmp_path / "c.mp4", 10, "h264", size=(64, 48))
    with pytest.raises(ValueError, match="window must be"):
        classify_windows(tiny_model, clip, ["a"], window=0, stride=1)
    with pytest.raises(ValueError, match="label list is empty"):
        classify_windows(tiny_model, clip, [], window=1, stride=1)
    with pytest.raises(xe.VideoError, match="file not found"):
        classify_windows(tiny_model, tmp_path / "nope.mp4", ["a"], window=1, stride=1)
    with pytest.raises(ValueError, match="the dict classify_windows returns"):
        plot_timeline({"windows": []}, str(tmp_path / "x.png"))


def _concat(paths, out):
    """Join clips of the same size into one H.264 file (frames re-encoded back to back)."""
    with av.open(str(out), "w") as dst:
        stream = None
        for path in paths:
            with av.open(str(path)) as src:
                for frame in src.decode(video=0):
                    if stream is None:
                        stream = dst.add_stream("libx264", rate=12)
                        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                    img = frame.to_ndarray(format="rgb24")
                    dst.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        dst.mux(stream.encode())
    return str(out)


def test_timeline_follows_a_change_of_content(tmp_path):
    # the bundled model knows colours: a red clip followed by a blue one must flip the winner
    model = xe.load()
    clip = _concat([EXAMPLES / "01_a_red_circle_moving_left.mp4", EXAMPLES / "04_a_blue_circle_moving_up.mp4"],
                   tmp_path / "red_then_blue.mp4")
    labels = ["a red circle moving left", "a blue circle moving up"]
    tl = classify_windows(model, clip, labels, window=2.0, stride=2.0, decoder="pyav")
    assert [(w["start"], w["end"]) for w in tl["windows"]] == [(0, 2), (2, 4)]
    assert [w["top"][0][0] for w in tl["windows"]] == labels
