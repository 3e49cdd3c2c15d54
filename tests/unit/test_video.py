"""engine/video/reader.py: official frame sampling, exact frame decoding (H.264 with B-frames, VP9,
MJPEG, VFR, rotation), seeking, official resize/crop/normalize and view order, bad files."""

import os
import pickle

import av
import cv2
import numpy as np
import pytest
import video_factory as vf

from xclip_engine.engine.video import reader as V

MEAN64 = np.float32([123.675, 116.28, 103.53]).astype(np.float64)
STD64 = np.float32([58.395, 57.12, 57.375]).astype(np.float64)


def expected_norm(u8):
    """Official Normalize values: float64 (x - mean) * (1 / std) from float32 constants."""
    return ((u8.astype(np.float64) - MEAN64) * (1.0 / STD64)).astype(np.float32)


def indices_of(frames):
    return [vf.decode_index(f) for f in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Index videos, written once per module on demand: videos(codec, n, **options) -> path."""
    root = tmp_path_factory.mktemp("videos")
    cache = {}

    def get(codec, n, ext=None, **kw):
        key = (codec, n, ext, tuple(sorted(kw.items())))
        if key not in cache:
            ext = ext or {"h264": "mp4", "vp9": "webm", "mjpeg": "avi"}[codec]
            path = root / f"v{len(cache)}_{codec}_{n}.{ext}"
            kw = {k: dict(v) if k == "options" else v for k, v in kw.items()}  # hashable -> dict
            cache[key] = vf.write_index_video(path, n, codec, **kw)
        return cache[key]

    return get


def plain_decode(path):
    """Ground truth: every frame a single-threaded PyAV pass yields, damaged packets skipped."""
    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "SLICE"
        for pkt in c.demux(s):
            try:
                out += [f.to_ndarray(format="rgb24") for f in s.decode(pkt)]
            except av.FFmpegError:
                pass
    return out


# ---- sampling: official rules --------------------------------------------------------------

@pytest.mark.parametrize("n,t,expected", [
    (300, 8, [18, 56, 93, 131, 168, 206, 243, 281]),   # avg 37.5: int(37.5 i + 18.75)
    (5, 8, [0, 0, 1, 2, 2, 3, 4, 4]),                   # shorter than T: frames repeat
    (16, 16, list(range(16))),
    (10, 32, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4,
              5, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 9, 9, 9]),
    (1, 8, [0] * 8),
    (7, 1, [3]),
])
def test_sample_indices_hand_values(n, t, expected):
    assert V.sample_indices(n, t) == expected


def test_sample_indices_rejects_empty():
    with pytest.raises(ValueError):
        V.sample_indices(0, 8)
    with pytest.raises(ValueError):
        V.sample_indices(10, 0)


def test_multi_clip_rule():
    assert V.sample_clip_indices(300, 8, 1) == [V.sample_indices(300, 8)]
    clips = V.sample_clip_indices(300, 8, 4, seed=0)
    assert len(clips) == 4 and all(len(c) == 8 for c in clips)
    for clip in clips:  # avg = 300 // 8 = 37: one random frame in each 37-frame segment
        assert all(i * 37 <= f < (i + 1) * 37 for i, f in enumerate(clip))
    # Same legacy generator and call sequence as the official np.random (clip after clip).
    rs = np.random.RandomState(0)
    assert clips == [(np.arange(8) * 37 + rs.randint(37, size=8)).tolist() for _ in range(4)]
    assert V.sample_clip_indices(300, 8, 4, seed=0) == clips
    assert V.sample_clip_indices(300, 8, 4, seed=1) != clips
    assert V.sample_clip_indices(8, 8, 4) == [list(range(8))] * 4  # randint(1) is always 0
    # Shorter than T: around(i * n / T), half to even (i=8 -> 2.5 -> 2), then mod n (10 -> 0).
    short = [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 8,
             9, 9, 9, 0]
    assert V.sample_clip_indices(10, 32, 2) == [short, short]
    fresh = V.sample_clip_indices(100, 8, 3, seed=None)
    assert all(0 <= f < 100 for clip in fresh for f in clip)


# ---- decoding: exactly the official frames ---------------------------------------------------

@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize("n,t", [(300, 8), (5, 8), (16, 16), (10, 32)])
def test_decoded_frames_are_the_official_indices(videos, codec, n, t):
    path = videos(codec, n)
    assert V.count_frames(path) == n
    idx = V.sample_indices(n, t)
    assert indices_of(V.read_frames(path, idx)) == idx


def test_h264_fixture_has_b_frames_and_default_gop(videos):
    with av.open(videos("h264", 300)) as c:
        pkts = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    pts = [p for p, _ in pkts]
    assert pts != sorted(pts), "decode order == presentation order: no B-frames"
    assert sum(k for _, k in pkts) == 2  # x264 default keyint 250 over 300 frames


def test_every_frame_and_odd_orders(videos):
    for path in (videos("h264", 300), videos("vp9", 300), videos("mjpeg", 30)):
        n = V.count_frames(path)
        assert indices_of(V.read_frames(path, range(n))) == list(range(n))
    path = videos("h264", 300)
    assert indices_of(V.read_frames(path, [299, 5, 120, 5, 0])) == [299, 5, 120, 5, 0]
    assert V.read_frames(path, []) == []
    with pytest.raises(ValueError, match="out of range"):
        V.read_frames(path, [300])


@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("vp9", "webm"), ("h264", "mkv")])
def test_variable_frame_rate(videos, codec, ext):
    pts = np.cumsum(np.random.default_rng(1).integers(10, 100, 60)).tolist()
    path = videos(codec, 60, ext=ext, pts_ms=tuple(pts))
    idx = V.sample_indices(60, 8)
    assert indices_of(V.read_frames(path, idx)) == idx


def test_seeks_instead_of_decoding_everything(videos):
    path = videos("h264", 300, options=(("g", "25"),))  # B-frames, a keyframe every 25 frames
    late = [150 + i for i in V.sample_indices(150, 8)]
    stats = V.DecodeStats()
    assert indices_of(V.read_frames(path, late, stats=stats)) == late
    # Reaching frame 150 by decoding from the start alone would take 150 frames.
    assert stats.seeks >= 1 and stats.full_passes == 0 and stats.frames_decoded < 150, stats
    stats = V.DecodeStats()
    V.read_video(path, 8, size=32, stats=stats)
    assert stats.frames_decoded < 200, stats
    stats = V.DecodeStats()  # all-intra MJPEG: exactly one decoded frame per distinct target
    idx = V.sample_indices(30, 8)
    assert indices_of(V.read_frames(videos("mjpeg", 30), idx, stats=stats)) == idx
    assert stats.frames_decoded == len(set(idx)), stats


# ---- rotation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rotation,hflip,vflip", [
    (90, False, False), (-90, False, False), (180, False, False), (0, True, False),
    (90, True, False), (0, False, True)])
def test_display_matrix_is_applied(videos, rotation, hflip, vflip):
    path = videos("h264", 3, rotation=rotation, hflip=hflip, vflip=vflip)
    raw = plain_decode(path)  # as stored, not rotated
    # PyAV/FFmpeg: the display rotation is counter-clockwise (np.rot90's sense) and the flips
    # mirror after it; e.g. +90 puts the stored top-left corner at the bottom-left.
    expected = np.rot90(raw[1], rotation // 90)
    expected = expected[:, ::-1] if hflip else expected
    expected = expected[::-1] if vflip else expected
    got = V.read_frames(path, [1])[0]
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert V.read_video(path, 4, size=32).shape == (1, 4, 3, 32, 32)


def test_apply_display_matrix_directly():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    one = 1 << 16
    assert V.apply_display_matrix(img, None) is img
    assert np.array_equal(V.apply_display_matrix(img, [one, 0, 0, 0, one, 0, 0, 0, 1 << 30]), img)
    assert np.array_equal(V.apply_display_matrix(img, [0, -one, 0, one, 0, 0, 0, 0, 1 << 30]),
                          np.rot90(img, 1))
    assert np.array_equal(V.apply_display_matrix(img, [0, one, 0, -one, 0, 0, 0, 0, 1 << 30]),
                          np.rot90(img, -1))
    assert np.array_equal(V.apply_display_matrix(img, [-one, 0, 0, 0, one, 0, 0, 0, 1 << 30]),
                          img[:, ::-1])


# ---- truncated and bad files -------------------------------------------------------------------

@pytest.mark.parametrize("num_frames", [300, 60])
def test_truncated_mp4_uses_the_frames_that_decode(tmp_path, num_frames):
    path = vf.write_truncated_mp4(tmp_path / "cut.mp4", num_frames, keep=0.5, faststart=True)
    with av.open(path) as c:
        assert c.streams.video[0].frames == num_frames  # the header still claims them all
    truth = indices_of(plain_decode(path))
    assert 0 < len(truth) < num_frames
    assert V.count_frames(path) == len(truth)
    stats = V.DecodeStats()
    x = V.read_video(path, 8, size=32, stats=stats)
    assert x.shape == (1, 8, 3, 32, 32) and stats.frames_in_file == len(truth)
    assert stats.frames_declared == num_frames and str(len(truth)) in stats.warning(path)  # said, not hidden
    idx = V.sample_indices(len(truth), 8)
    assert indices_of(V.read_frames(path, idx)) == [truth[i] for i in idx]


def _missing(p):
    return str(p)


def _directory(p):
    os.mkdir(p)
    return str(p)


BAD_FILES = {
    "missing.mp4": _missing,
    "folder.mp4": _directory,
    "empty.mp4": vf.write_zero_byte,
    "text.mp4": vf.write_text_as_video,
    "truncated.mp4": lambda p: vf.write_truncated_mp4(p, 60, keep=0.5),
    "audio.mp4": vf.write_audio_only,
    "audio_mp2.mkv": lambda p: vf.write_audio_only(p, codec="mp2"),
    "no_frames.mkv": vf.write_empty_video_stream,
    "junk.mkv": vf.write_junk_video,
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_raise_video_error_naming_the_file(tmp_path, name):
    path = BAD_FILES[name](tmp_path / name)
    calls = [lambda: V.read_video(path, 8, size=32), lambda: V.read_frames(path, [0])]
    if name == "junk.mkv":  # count_frames reads packets without decoding them: 10 are there
        assert V.count_frames(path) == 10
    else:
        calls.append(lambda: V.count_frames(path))
    for call in calls:
        with pytest.raises(V.VideoError) as err:
            call()
        assert str(path) in str(err.value) and err.value.path == str(path)
        assert err.value.__cause__ is None  # no chained av/ffmpeg traceback
    again = pickle.loads(pickle.dumps(err.value))  # survives DataLoader worker processes
    assert type(again) is V.VideoError and str(again) == str(err.value)


def test_sequential_fallback_gives_the_same_frames(videos, monkeypatch):
    """When the packet index and the decoder disagree, a plain pass from the start is used."""
    path = videos("h264", 300)
    idx = V.sample_indices(300, 8)
    fast = V.read_video(path, 8, size=32)

    def disagree(self, indices):
        raise V.FrameMismatch

    monkeypatch.setattr(V.VideoFile, "read", disagree)
    stats = V.DecodeStats()
    assert indices_of(V.read_frames(path, idx, stats=stats)) == idx and stats.full_passes == 1
    stats = V.DecodeStats()
    np.testing.assert_array_equal(V.read_video(path, 8, size=32, stats=stats), fast)
    assert stats.full_passes == 2 and stats.frames_in_file == 300  # re-count, then read


# ---- preprocessing: official resize / crop / normalize ----------------------------------------

def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def test_resize_rule_hand_values():
    assert [V.resize_target(s) for s in (224, 336, 288, 32)] == [256, 384, 329, 36]
    for (w, h), expected in [((320, 240), (341, 256)), ((640, 360), (455, 256)),
                             ((48, 64), (256, 341)), ((1080, 1920), (256, 455)),
                             ((340, 256), (340, 256))]:
        assert V.rescaled_size(w, h, 256) == expected
    for h, w in [(240, 320), (101, 203), (64, 48)]:
        img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        nw, nh = V.rescaled_size(w, h, 256)
        direct = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(V.resize_short_side(img, 256), direct)


def test_crop_coordinates():
    img = gradient(60, 91)
    c = V.center_crop(img, 32)
    assert c.shape == (32, 32, 3) and tuple(c[0, 0, :2]) == ((91 - 32) // 2, (60 - 32) // 2)
    off = V.three_crop_offsets
    assert off(301, 224, 224) == [(0, 0), (76, 0), (38, 0)]  # left, right (2*step), middle
    assert off(224, 300, 224) == [(0, 0), (0, 76), (0, 38)]  # top, bottom, middle
    assert off(224, 224, 224) == [(0, 0)] * 3
    crops = V.three_crop(gradient(32, 43), 32)
    assert [int(cr[0, 0, 0]) for cr in crops] == [0, 10, 5]


@pytest.mark.parametrize("h,w,resized,origin", [
    (48, 64, (48, 36), (8, 2)),    # landscape: short side 48 -> 36, then crop 32 at (8, 2)
    (64, 48, (36, 48), (2, 8)),    # portrait
])
def test_single_view_matches_direct_cv2(h, w, resized, origin):
    img = gradient(h, w)
    assert V.rescaled_size(w, h, V.resize_target(32)) == resized
    direct = cv2.resize(img, resized, interpolation=cv2.INTER_LINEAR)
    left, top = origin
    expected = expected_norm(direct[top:top + 32, left:left + 32]).transpose(2, 0, 1)
    out = V.preprocess([img, img], size=32)
    assert out.shape == (1, 2, 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 1], expected)


def test_normalization_constants():
    assert V.MEAN == (123.675, 116.28, 103.53) and V.STD == (58.395, 57.12, 57.375)
    for v in (0, 128, 255):
        out = V.preprocess([np.full((40, 40, 3), v, np.uint8)], size=32)
        for c in range(3):
            np.testing.assert_allclose(out[0, 0, c], (v - V.MEAN[c]) / V.STD[c], rtol=1e-6)
            assert np.all(out[0, 0, c] == expected_norm(np.full((1, 1, 3), v, np.uint8))[0, 0, c])


def test_view_order_4x3():
    t = 2
    frames = []
    for clip in range(4):
        for ti in range(t):
            img = gradient(48, 64)
            img[..., 1] = 40 * clip + ti  # the clip and time show in the green channel
            frames.append(img)
    out = V.preprocess(frames, size=32, views="4x3")
    assert out.shape == (12, t, 3, 32, 32) and out.dtype == np.float32
    for v in range(12):
        crop, clip = divmod(v, 4)  # view v = crop v // 4 of clip v % 4
        for ti in range(t):
            img = frames[clip * t + ti]
            expected = V.three_crop(V.resize_short_side(img, 32), 32)[crop]
            np.testing.assert_array_equal(out[v, ti], expected_norm(expected).transpose(2, 0, 1))
    red = out[:, 0, 0].mean(axis=(1, 2))
    assert red[0] < red[8] < red[4]  # left, then middle, then right in the image
    portrait = V.preprocess([gradient(64, 48)] * 3, size=32, views="1x3")
    green = portrait[:, 0, 1].mean(axis=(1, 2))
    assert green[0] < green[2] < green[1]  # top, bottom, middle


def test_views_parsing():
    assert V.parse_views("1x1") == (1, 1) and V.parse_views("4x3") == (4, 3)
    assert V.parse_views("2X1") == (2, 1)
    for bad in ("4x2", "0x1", "abc", "4", ""):
        with pytest.raises(ValueError, match="views"):
            V.parse_views(bad)
    with pytest.raises(ValueError):
        V.preprocess([gradient(48, 64)] * 3, size=32, views="2x1")


def test_read_video_end_to_end(videos):
    path = videos("h264", 300)
    x = V.read_video(path, 8, size=32)
    frames = V.read_frames(path, V.sample_indices(300, 8))
    assert x.shape == (1, 8, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, V.preprocess(frames, size=32))
    assert V.read_video(path, 8).shape == (1, 8, 3, 224, 224)
    multi = V.read_video(path, 8, size=32, views="4x3")
    clips = V.sample_clip_indices(300, 8, 4, seed=0)
    expected = V.preprocess(V.read_frames(path, [i for c in clips for i in c]), size=32, views="4x3")
    assert multi.shape == (12, 8, 3, 32, 32)
    np.testing.assert_array_equal(multi, expected)
    assert V.read_video(path, 8, size=32, views="2x1").shape == (2, 8, 3, 32, 32)
    with pytest.raises(ValueError, match="views"):
        V.read_video(path, 8, views="4x2")
