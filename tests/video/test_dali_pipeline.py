"""DALI against PyAV on the same clips: same frames, close tensors (CPU: VP9 and MJPEG only)."""

import importlib.util

import numpy as np
import pytest
from video_factory import decode_index

from xclip_engine.engine.video.reader import VideoError, read_frames, read_video, sample_indices

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None,
                                reason="needs NVIDIA DALI (pip install nvidia-dali-cuda120)")


def _gpu():
    import torch

    return torch.cuda.is_available()


# Measured on these clips: 0.025 (1x1) / 0.019 (4x3) in normalized units, i.e. about 1.4 of 255
# levels (std ~57). The frames are the same; the values differ because libswscale (PyAV) and DALI
# convert YUV 4:2:0 -> RGB with different chroma upsampling and rounding (raw frames: mean 1.5
# levels, larger only at sharp colour edges), and OpenCV's bilinear uses 11-bit fixed-point weights
# where DALI computes in float.
MAX_MEAN_ABS_DIFF = 0.05


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_dali_cpu_decodes_the_same_frames_as_pyav(clips, codec):
    from xclip_engine.engine.video.dali import decode_frames_dali

    indices = sample_indices(40, 8) + [39, 0, 17, 17]   # TSN, then out of order and repeated
    got = decode_frames_dali(clips[codec], indices, device="cpu")
    assert got.shape == (len(indices), 64, 96, 3) and got.dtype == np.uint8
    assert [decode_index(f) for f in got] == indices
    ref = np.stack(read_frames(clips[codec], indices)).astype(np.float64)
    raw_mad = np.abs(got - ref).mean()
    print(f"{codec}: raw RGB mean |DALI - PyAV| = {raw_mad:.2f} levels")
    assert raw_mad < 3


@pytest.mark.parametrize("views", ["1x1", "4x3"])
def test_dali_cpu_clip_close_to_pyav(clips, views):
    from xclip_engine.engine.video.decoders import read_clip

    got = read_clip(clips["vp9"], 8, 32, views, decoder="dali", device="cpu")
    ref = read_video(clips["vp9"], 8, 32, views)
    assert got.shape == ref.shape and got.dtype == np.float32
    mad = float(np.abs(got - ref).mean())
    print(f"{views}: mean |DALI - PyAV| = {mad:.4f} (normalized units), max {np.abs(got - ref).max():.3f}")
    assert mad < MAX_MEAN_ABS_DIFF


def test_auto_uses_dali_for_vp9_on_cpu(clips, monkeypatch):
    from xclip_engine.engine.video import decoders

    monkeypatch.setattr(decoders, "_gpu_present", lambda: False)
    assert decoders.choose_decoder(clips["vp9"]) == "dali"
    assert decoders.choose_decoder(clips["h264"]) == "pyav"


def test_read_index_clips_explicit_windows(clips):
    from xclip_engine.engine.video.dali import decode_frames_dali, read_index_clips

    got = read_index_clips(clips["vp9"], [[0, 1, 2, 3], [30, 31, 32, 33]], 32, device="cpu")
    assert got.shape == (2, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="out of range"):
        read_index_clips(clips["vp9"], [[0, 40, 1, 2]], 32, device="cpu")
    with pytest.raises(VideoError, match="h264"):
        decode_frames_dali(clips["h264"], [0], device="cpu")


@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU (DALI's mixed decoder, NVDEC)")
def test_dali_gpu_h264_close_to_pyav(clips):
    from xclip_engine.engine.video.dali import decode_frames_dali, read_clip_dali

    indices = sample_indices(40, 8)
    assert [decode_index(f) for f in decode_frames_dali(clips["h264"], indices, device="cuda")] == indices
    clip = read_clip_dali(clips["h264"], 8, 32, device="cuda")
    assert float(np.abs(clip - read_video(clips["h264"], 8, 32)).mean()) < MAX_MEAN_ABS_DIFF


def test_timeline_with_dali_matches_pyav_windows(clips, tiny_hf):
    import xclip_engine as xe
    from xclip_engine.engine.video.timeline import classify_windows

    model = xe.load(tiny_hf)
    a = classify_windows(model, clips["vp9"], ["a", "b", "c"], window=0.5, stride=0.25, decoder="dali")
    b = classify_windows(model, clips["vp9"], ["a", "b", "c"], window=0.5, stride=0.25, decoder="pyav")
    assert [(w["start"], w["end"]) for w in a["windows"]] == [(w["start"], w["end"]) for w in b["windows"]]
    diff = max(abs(x - y) for wa, wb in zip(a["windows"], b["windows"]) for x, y in zip(wa["scores"], wb["scores"]))
    print(f"timeline DALI vs PyAV: max score difference {diff:.4f}")
    assert diff < 0.1   # measured 0.025: a random tiny model magnifies the ~1-level pixel differences
