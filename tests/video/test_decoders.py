"""Decoder choice and errors (no DALI needed: DALI's presence is simulated where it matters)."""

import numpy as np
import pytest

from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.decoders import DECODERS, DecoderUnavailableError, choose_decoder, read_clip
from xclip_engine.engine.video.reader import VideoError, read_video


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


def test_auto_on_gpu_takes_dali_for_8bit_420_of_its_codecs(clips, dali_present):
    assert choose_decoder(clips["h264"], "auto", device="cuda:0") == "dali"
    assert choose_decoder(clips["vp9"], "auto", device="gpu") == "dali"
    assert choose_decoder(clips["mjpeg"], "auto", device="gpu") == "dali"   # yuvj420p


def _write(path, encoder, pix_fmt, frames=3, options=None):
    """A few index frames with any encoder and pixel format (video_factory knows three codecs)."""
    import av
    from video_factory import index_image

    try:
        codec = av.codec.Codec(encoder, "w")
    except Exception:  # noqa: BLE001 - UnknownCodecError and friends
        pytest.skip(f"this FFmpeg has no {encoder} encoder")
    if pix_fmt not in [f.name for f in codec.video_formats or []]:
        pytest.skip(f"{encoder} here cannot write {pix_fmt}")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        stream.options = options or {}
        for k in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_image(k), format="rgb24")))
        out.mux(stream.encode())
    return str(path)


GPU_ROUTES = [  # encoder, pixel format, file, FFmpeg codec name, what auto picks on a GPU
    ("libx264", "yuv420p10le", "a.mp4", "h264", "pyav"),   # 10-bit: DALI's NV12 conversion is 8-bit
    ("libx264", "yuv444p", "b.mp4", "h264", "pyav"),       # 4:4:4
    ("libx264", "yuv422p", "c.mkv", "h264", "pyav"),       # 4:2:2
    ("libx265", "yuv420p", "d.mp4", "hevc", "dali"),
    ("libx265", "yuv420p10le", "e.mkv", "hevc", "pyav"),
    ("mjpeg", "yuvj422p", "f.avi", "mjpeg", "pyav"),       # what webcams write
    ("mpeg4", "yuv420p", "g.avi", "mpeg4", "dali"),
    ("mpeg2video", "yuv420p", "h.mpg", "mpeg2video", "pyav"),   # not a codec DALI reads
    ("ffv1", "yuv420p", "i.mkv", "ffv1", "pyav"),
    ("libsvtav1", "yuv420p", "j.mkv", "av1", "dali"),      # decoded by libdav1d: named by codec
]


@pytest.mark.parametrize("encoder, pix_fmt, name, codec, expected", GPU_ROUTES,
                         ids=[f"{e}-{f}" for e, f, *_ in GPU_ROUTES])
def test_gpu_routing_by_codec_and_pixel_format(tmp_path, dali_present, encoder, pix_fmt, name, codec, expected):
    options = {"x265-params": "log-level=none"} if encoder == "libx265" else None
    path = _write(tmp_path / name, encoder, pix_fmt, options=options)
    probe = decoders.probe_video(path)
    assert (probe.codec, probe.pix_fmt, probe.rotated) == (codec, pix_fmt, False)
    assert choose_decoder(path, "auto", device="cuda") == expected
    if expected == "pyav":
        what = "pixel format is" if codec in decoders.DALI_GPU_CODECS else "codec is"
        with pytest.raises(VideoError, match=f"{what} {codec if what == 'codec is' else pix_fmt}.*--decoder pyav"):
            choose_decoder(path, "dali", device="cuda")
    else:
        assert choose_decoder(path, "dali", device="cuda") == "dali"
    # on the CPU only the codec matters (DALI's CPU decoder converts any pixel format)
    cpu = "dali" if codec in decoders.DALI_CPU_CODECS else "pyav"
    assert choose_decoder(path, "auto", device="cpu") == cpu


def test_cpu_routing_ignores_the_pixel_format(tmp_path, dali_present):
    path = _write(tmp_path / "k.mkv", "mjpeg", "yuvj422p")
    assert choose_decoder(path, "auto", device="cpu") == "dali"
    assert decoders.dali_refusal(decoders.VideoProbe("vp9", "yuv444p", False), on_gpu=False) is None
    assert "8-bit 4:2:0" in decoders.dali_refusal(decoders.VideoProbe("vp9", "yuv444p", False), on_gpu=True)
    assert "pixel format is unknown" in decoders.dali_refusal(decoders.VideoProbe("h264", "", False), on_gpu=True)


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
