"""Small clips shared by the decoder tests (written once per session with PyAV)."""

import pytest
from video_factory import write_index_video


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder-clips")
    return {
        "h264": write_index_video(folder / "a.mp4", 40, "h264", size=(96, 64)),
        "vp9": write_index_video(folder / "a.webm", 40, "vp9", size=(96, 64)),
        "mjpeg": write_index_video(folder / "a.mkv", 40, "mjpeg", size=(96, 64)),
        "vp9_rotated": write_index_video(folder / "r.webm", 10, "vp9", size=(96, 64), rotation=90),
    }


@pytest.fixture(autouse=True)
def _no_dali_verdict_yet(monkeypatch):
    """Every test starts before the first-clip check (read_clip keeps one verdict per process and
    device), so that tests do not depend on which of them decoded with DALI first."""
    from xclip_engine.engine.video import decoders

    monkeypatch.setattr(decoders, "_DALI_CHECKED", {})
