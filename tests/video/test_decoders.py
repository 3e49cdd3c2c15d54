"""Decoder choice and errors (no DALI needed: DALI's presence is simulated where it matters)."""

import numpy as np
import pytest

from xclip_engine.engine import decoders
from xclip_engine.engine.decoders import DECODERS, DecoderUnavailableError, choose_decoder, read_clip
from xclip_engine.engine.video import VideoError, read_video


@pytest.fixture
def dali_present(monkeypatch):
    monkeypatch.setattr(decoders, "dali_installed", lambda: True)


@pytest.fixture
def dali_missing(monkeypatch):
    monkeypatch.setattr(decoders, "dali_installed", lambda: False)


def test_decoder_names():
    assert DECODERS == ("auto", "dali", "pyav")


def test_pyav_path_is_read_video_exactly(clips):
    for views in ("1x1", "2x3"):
        got = read_clip(clips["h264"], 4, 32, views, decoder="pyav")
        assert got.dtype == np.float32 and got.shape == (2 * 3 if views == "2x3" else 1, 4, 3, 32, 32)
        np.testing.assert_array_equal(got, read_video(clips["h264"], 4, 32, views))


def test_auto_on_cpu_routes_by_codec(clips, dali_present):
    assert choose_decoder(clips["h264"], "auto", device="cpu") == "pyav"
    assert choose_decoder(clips["vp9"], "auto", device="cpu") == "dali"
    assert choose_decoder(clips["mjpeg"], "auto", device="cpu") == "dali"
    assert choose_decoder(clips["h264"], "pyav", device="cpu") == "pyav"


def test_auto_on_gpu_takes_dali_for_every_codec(clips, dali_present):
    assert choose_decoder(clips["h264"], "auto", device="cuda:0") == "dali"
    assert choose_decoder(clips["vp9"], "auto", device="gpu") == "dali"


def test_auto_without_dali_is_pyav(clips, dali_missing):
    for name in ("h264", "vp9"):
        assert choose_decoder(clips[name], "auto", device="cpu") == "pyav"
        assert choose_decoder(clips[name], "auto", device="gpu") == "pyav"
    np.testing.assert_array_equal(read_clip(clips["vp9"], 4, 32), read_video(clips["vp9"], 4, 32))


def test_rotated_videos_go_to_pyav(clips, dali_present):
    # DALI ignores the display matrix: frames would come out sideways
    assert choose_decoder(clips["vp9_rotated"], "auto", device="cpu") == "pyav"
    assert choose_decoder(clips["vp9_rotated"], "auto", device="gpu") == "pyav"
    with pytest.raises(VideoError, match="rotation.*--decoder pyav or auto"):
        choose_decoder(clips["vp9_rotated"], "dali", device="cpu")


def test_forced_dali_on_h264_cpu_names_codec_and_way_out(clips, dali_present):
    with pytest.raises(VideoError, match=r"codec is h264, which DALI's CPU decoder cannot read.*--decoder pyav"):
        choose_decoder(clips["h264"], "dali", device="cpu")


def test_forced_dali_when_not_installed_says_how_to_install(clips, dali_missing):
    with pytest.raises(DecoderUnavailableError, match="pip install nvidia-dali-cuda120"):
        read_clip(clips["vp9"], 4, 32, decoder="dali")


def test_bad_arguments(clips):
    with pytest.raises(ValueError, match="decoder 'ffmpeg' is not one of auto, dali, pyav"):
        choose_decoder(clips["h264"], "ffmpeg")
    with pytest.raises(ValueError, match="device 'tpu'"):
        choose_decoder(clips["h264"], "auto", device="tpu")


def test_unusable_files_raise_video_error(tmp_path, dali_present):
    with pytest.raises(VideoError, match="file not found"):
        choose_decoder(tmp_path / "missing.webm", "auto", device="cpu")
    text = tmp_path / "notes.webm"
    text.write_text("not a video at all\n" * 50)
    with pytest.raises(VideoError, match="cannot be opened as a video"):
        choose_decoder(text, "auto", device="cpu")
    with pytest.raises(VideoError, match="file not found"):
        read_clip(tmp_path / "missing.mp4", 4, 32, decoder="pyav")
