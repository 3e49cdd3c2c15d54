"""DALI's safety nets: frame indices equal PyAV's and never padded past the end, PyAV when DALI
fails under ``auto``, and the first-clip check of DALI against PyAV.

DALI runs its CPU operators here (VP9 and MJPEG only); the H.264 B-frame / edit-list check needs
NVDEC and skips without a GPU.
"""

import importlib.util
import threading
import warnings

import av
import numpy as np
import pytest
from video_factory import decode_index, index_image, write_index_video, write_junk_video

from xclip_engine.engine.video import dali as dali_pipeline
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.decoders import DecoderMismatchWarning, read_clip
from xclip_engine.engine.video.reader import MEAN, STD, VideoError, read_frames, read_video, sample_indices

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="needs NVIDIA DALI (pip install nvidia-dali-cuda120)")


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _mismatches(caught) -> list:
    return [w for w in caught if issubclass(w.category, DecoderMismatchWarning)]


# -- frame indices ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def index_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index-clips")
    return {
        "vp9": write_index_video(folder / "a.webm", 40, "vp9", size=(96, 64)),
        # a keyframe every 5 frames: DALI seeks back to one for each out-of-order index
        "vp9_gop5": write_index_video(folder / "g.webm", 40, "vp9", size=(96, 64), options={"g": "5"}),
        "mjpeg": write_index_video(folder / "a.mkv", 40, "mjpeg", size=(96, 64)),
    }


def _scrambled(n: int) -> list[int]:
    order = [int(i) for i in np.random.default_rng(1).permutation(n)]
    return order + [n - 1, 0, order[0], n - 1]   # every frame, out of order, then repeats


@needs_dali
@pytest.mark.parametrize("name", ["vp9", "vp9_gop5", "mjpeg"])
def test_dali_frame_indices_equal_pyavs(index_clips, name):
    path = index_clips[name]
    indices = _scrambled(40)
    dali = [decode_index(f) for f in dali_pipeline.decode_frames_dali(path, indices, device="cpu")]
    pyav = [decode_index(f) for f in read_frames(path, indices)]
    assert dali == pyav == indices


def _hidden_frames(path) -> int:
    """VP9 packets that carry a frame not shown (an alt-ref): a superframe, whose last byte is
    the 0b110xxxxx index marker, or a lone frame with show_frame = 0 (bit 1 of the first byte
    for profile 0)."""
    with av.open(path) as container:
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    return sum(1 for b in packets if (b[-1] & 0xE0) == 0xC0 or not (b[0] >> 1) & 1)


@needs_dali
def test_dali_frame_indices_with_vp9_alt_ref_frames(tmp_path):
    # VP9's counterpart of B-frames: alt-ref frames are coded ahead and never shown themselves.
    # A textured background that moves gives the encoder a reason to make them.
    texture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8).repeat(4, axis=1)
    path = str(tmp_path / "arf.webm")
    with av.open(path, "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"deadline": "good", "cpu-used": "4", "auto-alt-ref": "1", "lag-in-frames": "25"}
        for k in range(60):
            img = index_image(k, 96, 64)
            img[32:] = texture[32:, 2 * k:2 * k + 96]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    if _hidden_frames(path) == 0:
        pytest.skip("libvpx made no alt-ref (hidden) frames: PyAV drives it in one pass only (two-pass "
                    "encoding needs the encoder's stats, which PyAV does not expose)")
    indices = _scrambled(60)
    assert [decode_index(f) for f in dali_pipeline.decode_frames_dali(path, indices, device="cpu")] == indices
    assert [decode_index(f) for f in read_frames(path, indices)] == indices


@needs_dali
def test_dali_never_pads_frames_past_the_end(index_clips):
    # DALI's default pad_mode fills frames past its own count with black, silently. Our indices
    # come from PyAV's count; should DALI count fewer frames, the index is DALI's error.
    assert dali_pipeline.DECODE_ARGS["pad_mode"] == "none"
    plan = dali_pipeline.plan_clip(index_clips["vp9"], 4, 32)
    plan.frames = np.array([0, 39, 40, 45], np.int32)   # as if PyAV had counted 46 frames
    with pytest.raises(VideoError, match=r"frame 40 was asked for, from PyAV's frame count, but DALI finds "
                                         r"only 40 frames.*--decoder pyav"):
        dali_pipeline._run_one(plan, None, 32)
    with pytest.raises(ValueError, match="out of range"):   # PyAV's count stops it before DALI
        dali_pipeline.decode_frames_dali(index_clips["vp9"], [0, 40], device="cpu")
    # the pipeline is rebuilt after the error and the last frame is still there
    assert [decode_index(f) for f in dali_pipeline.decode_frames_dali(index_clips["vp9"], [39], device="cpu")] == [39]


@pytest.fixture(scope="module")
def h264_bframe_clips(tmp_path_factory):
    """H.264 with B-frames in MP4: decode order != presentation order, dts start below zero and
    the muxer writes an edit list (elst) to hide the delay; the second clip also starts at 0.5 s,
    which the edit list shifts as well."""
    folder = tmp_path_factory.mktemp("h264-bframes")
    return [write_index_video(folder / "b.mp4", 48, "h264", size=(96, 64)),
            write_index_video(folder / "late.mp4", 48, "h264", size=(96, 64),
                              pts_ms=[500 + 33 * k for k in range(48)])]


def test_h264_bframe_clips_have_bframes_and_edit_lists(h264_bframe_clips):
    # what the GPU test below relies on, checked where it can be: here, with PyAV
    for path in h264_bframe_clips:
        with open(path, "rb") as f:
            assert b"elst" in f.read()
        with av.open(path) as container:
            kinds = [frame.pict_type for frame in container.decode(video=0)]
        assert kinds.count(av.video.frame.PictureType.B) > 10
        assert [decode_index(f) for f in read_frames(path, _scrambled(48))] == _scrambled(48)


@needs_dali
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU: DALI's CPU decoder does not read H.264, NVDEC does")
def test_dali_gpu_h264_bframes_edit_list_indices_equal_pyavs(h264_bframe_clips):
    for path in h264_bframe_clips:
        indices = _scrambled(48)
        got = dali_pipeline.decode_frames_dali(path, indices, device="cuda")
        assert [decode_index(f) for f in got] == [decode_index(f) for f in read_frames(path, indices)] == indices


# -- PyAV when DALI fails under auto ---------------------------------------------------------

class _FailingPipe:
    """Stands in for a DALI pipeline whose decoder fails, with DALI's error layout."""

    def feed_input(self, name, data):
        pass

    def run(self):
        raise RuntimeError("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.video`,\n"
                           "which was used in the pipeline definition with the following traceback:\n\n"
                           "encountered:\n\nsimulated decoder failure\nC++ context: [/opt/dali/x.cc:1]\n")


@pytest.fixture
def failing_dali(monkeypatch):
    monkeypatch.setattr(dali_pipeline, "_PIPES", {})
    monkeypatch.setattr(dali_pipeline, "_build", lambda *a, **k: _FailingPipe())


@needs_dali
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_auto_reads_with_pyav_when_dali_fails(index_clips, failing_dali, codec):
    path = index_clips[codec]
    assert decoders.choose_decoder(path, "auto", device="cpu") == "dali"
    np.testing.assert_array_equal(read_clip(path, 8, 32, decoder="auto", device="cpu"), read_video(path, 8, 32))
    assert decoders.dali_check("cpu") is None   # no verdict from a clip DALI did not decode
    np.testing.assert_array_equal(read_clip(path, 4, 32, "2x3", decoder="auto", device="cpu"),
                                  read_video(path, 4, 32, "2x3"))


@needs_dali
def test_forced_dali_reports_dalis_error(index_clips, failing_dali):
    with pytest.raises(VideoError, match=r"a\.webm: DALI's CPU decoder failed \(simulated decoder failure\); "
                                         r"use --decoder pyav"):
        read_clip(index_clips["vp9"], 8, 32, decoder="dali", device="cpu")


@needs_dali
def test_auto_reports_pyavs_verdict_on_a_file_neither_decodes(tmp_path):
    # MJPEG packets of random bytes: DALI's CPU decoder fails on them, and so does PyAV
    junk = write_junk_video(tmp_path / "junk.mkv")
    assert decoders.choose_decoder(junk, "auto", device="cpu") == "dali"
    with pytest.raises(VideoError, match="junk.mkv: .*no decodable frames"):
        read_clip(junk, 4, 32, decoder="auto", device="cpu")
    with pytest.raises(VideoError, match="junk.mkv: DALI's CPU decoder failed"):
        read_clip(junk, 4, 32, decoder="dali", device="cpu")


# -- the first-clip check --------------------------------------------------------------------

@pytest.fixture
def counting_pyav(monkeypatch):
    calls = []

    def counted(path, *args, **kwargs):
        calls.append(str(path))
        return read_video(path, *args, **kwargs)

    monkeypatch.setattr(decoders, "read_video", counted)
    return calls


@needs_dali
def test_first_dali_clip_is_checked_once_and_passes(index_clips, counting_pyav):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_clip(index_clips["vp9"], 8, 32, decoder="auto", device="cpu")
        for name in ("vp9", "mjpeg", "vp9_gop5"):
            read_clip(index_clips[name], 8, 32, "1x3", decoder="auto", device="cpu")
    assert counting_pyav == [index_clips["vp9"]]   # PyAV ran once: on the first clip, for the check
    check = decoders.dali_check("cpu")
    print(f"first-clip check: DALI vs PyAV difference {check.gap:.4f} (bound {decoders.DALI_CHECK_MAX_GAP})")
    assert check.ok and check.path == index_clips["vp9"]
    assert 0 < check.gap < decoders.DALI_CHECK_MAX_GAP / 2   # measured 0.020
    assert _mismatches(caught) == []
    ref = read_video(index_clips["vp9"], 8, 32)
    assert not np.array_equal(first, ref) and np.abs(first - ref).mean() < 0.05   # DALI's clip, close
    assert decoders.dali_check("cuda:0") is None   # one verdict per device


def _black(path, num_frames, size, views="1x1", device=None, **_):
    """What DALI's default padding would give: every frame black, in normalized units."""
    ref = read_video(path, num_frames, size, views)
    black = (0.0 - np.asarray(MEAN)) / np.asarray(STD)
    return np.broadcast_to(black[None, None, :, None, None], ref.shape).astype(np.float32).copy()


@pytest.fixture
def bad_dali(monkeypatch):
    """DALI's reader replaced by one that returns black frames; counts its calls."""
    calls = []

    def fake(path, *args, **kwargs):
        calls.append(str(path))
        return _black(path, *args, **kwargs)

    monkeypatch.setattr(dali_pipeline, "read_clip_dali", fake)
    return calls


@needs_dali
def test_bad_dali_output_switches_auto_to_pyav_with_one_warning(index_clips, bad_dali):
    vp9, mjpeg = index_clips["vp9"], index_clips["mjpeg"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_clip(vp9, 8, 32, decoder="auto", device="cpu")
        second = read_clip(mjpeg, 8, 32, decoder="auto", device="cpu")
        third = read_clip(vp9, 4, 32, "2x3", decoder="auto", device="cpu")
    np.testing.assert_array_equal(first, read_video(vp9, 8, 32))   # PyAV's clip, not the black one
    np.testing.assert_array_equal(second, read_video(mjpeg, 8, 32))
    np.testing.assert_array_equal(third, read_video(vp9, 4, 32, "2x3"))
    assert bad_dali == [vp9]   # DALI was not asked again
    (w,) = _mismatches(caught)
    text = str(w.message)
    print(text)
    assert text.startswith(vp9) and "disagrees with PyAV" in text and "uses PyAV for the rest of this process" in text
    check = decoders.dali_check("cpu")
    assert not check.ok and check.gap > 1 and f"{check.gap:.3f}" in text
    assert decoders.choose_decoder(mjpeg, "auto", device="cpu") == "pyav"
    assert decoders.choose_decoder(mjpeg, "dali", device="cpu") == "dali"   # forcing it still works


@needs_dali
def test_wrong_frames_from_dali_are_caught(index_clips, monkeypatch):
    # the real DALI decoding the right video at the wrong indices (the clip backwards)
    def backwards(path, num_frames, size, views="1x1", device=None, **_):
        return dali_pipeline.read_index_clips(path, [sample_indices(40, num_frames)[::-1]], size, device=device)

    monkeypatch.setattr(dali_pipeline, "read_clip_dali", backwards)
    with pytest.warns(DecoderMismatchWarning, match=r"a\.mkv: DALI's CPU decoder disagrees"):
        got = read_clip(index_clips["mjpeg"], 8, 32, decoder="auto", device="cpu")
    np.testing.assert_array_equal(got, read_video(index_clips["mjpeg"], 8, 32))
    assert decoders.DALI_CHECK_MAX_GAP < decoders.dali_check("cpu").gap   # measured 0.13


@needs_dali
def test_forced_dali_keeps_dali_after_a_bad_check_and_warns_once(index_clips, bad_dali):
    vp9 = index_clips["vp9"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_clip(vp9, 8, 32, decoder="dali", device="cpu")
        second = read_clip(vp9, 8, 32, decoder="dali", device="cpu")
    np.testing.assert_array_equal(first, _black(vp9, 8, 32))   # DALI's output, as asked
    np.testing.assert_array_equal(second, first)
    assert bad_dali == [vp9, vp9]
    (w,) = _mismatches(caught)
    assert "decoder 'dali' keeps using DALI" in str(w.message)


@needs_dali
def test_threads_wait_for_the_verdict(index_clips, bad_dali):
    # API callers decode in threads: none of them may take DALI's frames before the check is done
    paths = [index_clips["vp9"], index_clips["mjpeg"]] * 3
    results = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def work(i):
        start.wait()
        results[i] = read_clip(paths[i], 8, 32, decoder="auto", device="cpu")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(bad_dali) == 1 and len(_mismatches(caught)) == 1
    for path, got in zip(paths, results):
        np.testing.assert_array_equal(got, read_video(path, 8, 32))
