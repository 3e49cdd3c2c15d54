"""A folder of good and bad videos shared by the API/CLI tests (the tiny model is tests/conftest.py's tiny_hf)."""

import pytest
from video_factory import write_audio_only, write_index_video, write_text_as_video, write_truncated_mp4, write_zero_byte


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_index_video(d / "a_h264.mp4", 30, codec="h264", size=(64, 48))
    write_index_video(d / "b_vp9.webm", 12, codec="vp9", size=(48, 64))
    (d / "sub").mkdir()
    write_index_video(d / "sub" / "c_short.mp4", 3, codec="h264", size=(64, 48))
    write_zero_byte(d / "d_empty.mp4")
    write_text_as_video(d / "e_text.mp4")
    write_truncated_mp4(d / "f_truncated.mp4", num_frames=60, keep=0.3, faststart=False)
    write_audio_only(d / "g_audio.mp4")
    (d / "notes.txt").write_text("not a video, not listed")
    return d


@pytest.fixture(scope="session")
def good():
    return ["a_h264.mp4", "b_vp9.webm", "sub/c_short.mp4"]


@pytest.fixture(scope="session")
def bad():
    return ["d_empty.mp4", "e_text.mp4", "f_truncated.mp4", "g_audio.mp4"]
