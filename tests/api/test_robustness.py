"""One bad file must not cost a run: good and broken videos in ONE batch, each answered.

Every file below goes through the bundled model together. A good one (odd formats included: 10 bit,
4:4:4, gray, odd sizes, 4K, rotation, variable frame rate, one frame, a non-ASCII name) gets a
correct-shaped answer; a bad one gets an error that names it. Nothing crashes or hangs.
"""

import json
import os
import sys

import av
import numpy as np
import pytest
from click.testing import CliRunner
from video_factory import (
    write_audio_only,
    write_empty_video_stream,
    write_index_video,
    write_truncated_mp4,
    write_zero_byte,
)

import xclip_engine as xe
from xclip_engine.engine.cli import main

LABELS = ["red", "green", "blue", "yellow"]
TOPK = 3


def _write_gradient(path, num_frames, size, encoder="libx264", pix_fmt="yuv420p", options=None, fmt=None):
    """Frames of a moving gradient (any size: index_image needs 64x48 at least)."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options or {}
        y, x = np.mgrid[0:height, 0:width]
        for k in range(num_frames):
            img = np.stack([(x * 7 + 5 * k) % 256, (y * 3) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return str(path)


def _corrupt_middle(path):
    """Keyframes every 10 frames, index in front (faststart); then random bytes over the middle
    fifth of the frame data: the decoder skips the damage and the other GOPs still decode."""
    write_index_video(path, 60, options={"g": "10", "keyint_min": "10", "sc_threshold": "0"},
                      container_options={"movflags": "faststart"})
    data = bytearray(open(path, "rb").read())
    start = data.index(b"mdat")
    a, b = start + 2 * (len(data) - start) // 5, start + 3 * (len(data) - start) // 5
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    open(path, "wb").write(data)
    return str(path)


def _random_bytes(path):
    open(path, "wb").write(np.random.default_rng(2).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return str(path)


def _png(path):
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    return str(path)


def _broken_link(path):
    os.symlink(os.path.join(os.path.dirname(path), "gone.mp4"), path)
    return str(path)


def _unreadable(path):
    write_index_video(path, 10)
    os.chmod(path, 0)
    return str(path)


VFR_MS = [0, 10, 50, 60, 200, 210, 215, 400, 401, 600, 650, 700, 900, 950, 1000, 1200]

# name -> (writer, expected error text or None for "answered")
GOOD = {
    "good.mp4": lambda p: write_index_video(p, 30),
    "good.webm": lambda p: write_index_video(p, 12, codec="vp9"),
    "one_frame.mp4": lambda p: write_index_video(p, 1),
    "vfr.mkv": lambda p: write_index_video(p, len(VFR_MS), pts_ms=VFR_MS),
    "rotated.mp4": lambda p: write_index_video(p, 10, rotation=90),
    "ten_bit.mp4": lambda p: _write_gradient(p, 10, (64, 48), pix_fmt="yuv420p10le"),
    "yuv444.mp4": lambda p: _write_gradient(p, 10, (64, 48), pix_fmt="yuv444p"),
    "gray.mkv": lambda p: _write_gradient(p, 10, (64, 48), encoder="ffv1", pix_fmt="gray"),
    "odd_33x17.mp4": lambda p: _write_gradient(p, 6, (33, 17), pix_fmt="yuv444p"),
    "odd_33x17.webm": lambda p: _write_gradient(p, 6, (33, 17), encoder="libvpx-vp9", pix_fmt="yuv420p"),
    "uhd_3840x2160.mp4": lambda p: _write_gradient(p, 2, (3840, 2160), options={"preset": "ultrafast"}),
    "truncated_index_kept.mp4": lambda p: write_truncated_mp4(p, 60, keep=0.5, faststart=True),
    "corrupt_middle.mp4": _corrupt_middle,
    "vidéo_日本語 clip.mp4": lambda p: write_index_video(p, 10),
}
BAD = {
    "truncated.mp4": (lambda p: write_truncated_mp4(p, 60, keep=0.5), "cannot be opened"),
    "random_bytes.mp4": (_random_bytes, "cannot be opened"),
    "zero_bytes.mp4": (write_zero_byte, ""),
    "no_video_packets.mkv": (write_empty_video_stream, "no decodable frames"),
    "audio_only.mp4": (write_audio_only, "no video stream"),
    "image.png": (_png, "still image"),
    "broken_link.mp4": (_broken_link, "not found"),
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    for name, write in GOOD.items():
        write(str(d / name))
    for name, (write, _) in BAD.items():
        write(str(d / name))
    if not IS_ROOT:
        _unreadable(str(d / "unreadable.mp4"))
    yield d
    if not IS_ROOT:
        os.chmod(d / "unreadable.mp4", 0o644)   # let pytest clean up


@pytest.fixture(scope="module")
def model():
    return xe.load()   # the bundled demonstration model: 64 px, 8 frames


def _check(preds, zoo, messages=True):
    """Good files answered with TOPK labels; bad ones with an error naming the file (and, when
    `messages`, saying what is wrong: the auto decoder may word some errors differently)."""
    by_name = {os.path.basename(p.path): p for p in preds}
    for name in GOOD:
        p = by_name[name]
        assert p.error is None, f"{name}: {p.error}"
        assert len(p.top) == TOPK and {lab for lab, _ in p.top} <= set(LABELS)
        scores = [s for _, s in p.top]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores), name
    for name, (_, message) in BAD.items():
        p = by_name[name]
        assert p.error and p.top == [], f"{name} should fail, got {p.top}"
        assert str(zoo / name) in p.error and (not messages or message in p.error), p.error
    if not IS_ROOT:
        p = by_name["unreadable.mp4"]
        assert p.error and str(zoo / "unreadable.mp4") in p.error and "Permission" in p.error, p.error


def test_one_batch_of_good_and_bad_videos(model, zoo):
    paths = sorted(str(zoo / name) for name in os.listdir(zoo))
    preds = model.classify(paths, LABELS, topk=TOPK, batch_size=len(paths), decoder="pyav")
    assert [p.path for p in preds] == paths   # every input, in order, once
    _check(preds, zoo)
    # a good video scores the same alone as inside a batch full of failures
    alone = model.classify([str(zoo / "good.mp4")], LABELS, topk=TOPK, decoder="pyav")[0]
    together = next(p for p in preds if p.path.endswith("good.mp4"))
    assert [lab for lab, _ in alone.top] == [lab for lab, _ in together.top]
    assert [s for _, s in alone.top] == pytest.approx([s for _, s in together.top], abs=1e-4)


def test_cli_over_the_folder_answers_each_file_once(zoo, tmp_path):
    out = tmp_path / "res.jsonl"
    r = CliRunner().invoke(main, ["infer", str(zoo), "--labels", ", ".join(LABELS), "--topk", str(TOPK),
                                  "--format", "jsonl", "--output", str(out), "--workers", "3",
                                  "--batch-size", "4", "--glob", "*"], catch_exceptions=False)
    assert r.exit_code == 1, r.output   # some failed, the others were answered
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    names = [os.path.basename(row["path"]) for row in rows]
    assert sorted(names) == sorted(os.listdir(zoo)) and len(set(names)) == len(names)
    from xclip_engine.engine.api import Prediction

    preds = [Prediction(row["path"], [(t["label"], t["score"]) for t in row["top"]], row["error"]) for row in rows]
    _check(preds, zoo, messages=False)
    n_bad = len(BAD) + (not IS_ROOT)
    assert f"answered {len(rows) - n_bad}, failed {n_bad}" in r.stderr, r.stderr


@pytest.mark.skipif(IS_ROOT, reason="needs a non-root user: root reads files whatever their permissions")
def test_unreadable_file_is_answered_with_its_error(model, zoo):
    (p,) = model.classify([str(zoo / "unreadable.mp4")], LABELS, decoder="pyav")
    assert p.error and "unreadable.mp4" in p.error


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_missing_inputs_are_answers_not_crashes(zoo, tmp_path):
    r = CliRunner().invoke(main, ["infer", str(tmp_path / "nope.mp4"), str(zoo / "good.mp4"), "--labels", "a, b",
                                  "--format", "jsonl"], catch_exceptions=False)
    assert r.exit_code == 1
    rows = {os.path.basename(row["path"]): row for row in map(json.loads, r.stdout.splitlines())}
    assert "not found" in rows["nope.mp4"]["error"] and rows["good.mp4"]["error"] is None
