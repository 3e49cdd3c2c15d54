"""PyAV reader speed-ups must not change a single pixel: skipping unkept non-reference frames."""

import numpy as np
import pytest
from video_factory import decode_index, write_index_video

from xclip_engine.engine.video import reader as video
from xclip_engine.engine.video.reader import DecodeStats, read_frames, sample_indices


@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("vp9", "webm")])
def test_skipping_nonref_frames_keeps_frames_exact(tmp_path, monkeypatch, codec, ext):
    path = write_index_video(tmp_path / f"long.{ext}", 300, codec, size=(64, 48))
    indices = sample_indices(300, 8) + [1, 2, 299, 150, 150]
    fast_stats = DecodeStats()
    fast = read_frames(path, indices, stats=fast_stats)
    monkeypatch.setattr(video.VideoFile, "_skip_unkept", lambda self, packets, wanted_pts: packets)
    plain_stats = DecodeStats()
    plain = read_frames(path, indices, stats=plain_stats)
    assert [decode_index(f) for f in fast] == indices
    for a, b in zip(fast, plain):
        np.testing.assert_array_equal(a, b)
    assert fast_stats.full_passes == 0   # no kept frame went missing (which would force a full pass)
    print(f"{codec}: frames decoded {fast_stats.frames_decoded} with skipping, {plain_stats.frames_decoded} without")
    if codec == "h264":   # x264 defaults: B-frames, most of them never referenced
        assert fast_stats.frames_decoded < 0.75 * plain_stats.frames_decoded
