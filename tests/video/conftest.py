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
