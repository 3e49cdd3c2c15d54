"""EVL's test-time preprocessing (docs/preprocessing.md §7-§9): frame indices, the float resize and
crops, the view order, the spec dict and reading files with it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from video_factory import decode_index, write_index_video

from xclip_engine.engine.config import CLIP_MEAN, CLIP_STD, TINY, xclip_preprocessing
from xclip_engine.engine.video import decoders
from xclip_engine.engine.video.decoders import DecoderUnavailableError, read_clip
from xclip_engine.engine.video.evl_transforms import evl_crop_offsets, evl_resized_size, preprocess_evl
from xclip_engine.engine.video.preprocessing import evl_preprocessing, parse_preprocessing
from xclip_engine.engine.video.reader import read_frames, read_video
from xclip_engine.engine.video.sampling import stride_indices

# ---- which frames (§7) ------------------------------------------------------------------------


def test_stride_indices_short_video_is_padded_with_its_last_frame():
    # n = 10 < span 113: the clip starts at 0 and every index past 9 is the last frame
    assert stride_indices(10, 8, 16) == [[0, 9, 9, 9, 9, 9, 9, 9]]
    assert stride_indices(10, 8, 16, 3) == [[0, 9, 9, 9, 9, 9, 9, 9]] * 3   # slide 0: all start at 0
    assert stride_indices(1, 4, 2) == [[0, 0, 0, 0]]
    assert stride_indices(20, 4, 5) == [[2, 7, 12, 17]]                     # span 16, slide 4, start 2
    assert stride_indices(14, 4, 5) == [[0, 5, 10, 13]]                     # padded: 15 -> 13


def test_stride_indices_exact_length():
    full = [0, 16, 32, 48, 64, 80, 96, 112]                                 # n = (8 - 1) * 16 + 1
    assert stride_indices(113, 8, 16) == [full]
    assert stride_indices(113, 8, 16, 3) == [full] * 3


def test_stride_indices_long_video():
    # n = 300: slide = 300 - 113 = 187
    assert stride_indices(300, 8, 16) == [[93 + 16 * i for i in range(8)]]             # 187 // 2
    assert stride_indices(300, 8, 16, 3) == [
        [16 * i for i in range(8)],
        [94 + 16 * i for i in range(8)],     # round(93.5) = 94 (Python's round: half to even)
        [187 + 16 * i for i in range(8)],
    ]
    # half to even the other way: slide 185 -> round(92.5) = 92
    assert stride_indices(298, 8, 16, 3)[1][0] == 92
    # 4 views of slide 10: round(10/3 * j) = 0, 3, 7, 10
    assert [c[0] for c in stride_indices(41, 4, 10, 4)] == [0, 3, 7, 10]
    assert stride_indices(300, 32, 8, 1)[0][:3] == [25, 33, 41]              # span 249, slide 51


@pytest.mark.parametrize("n", [1, 5, 10, 112, 113, 114, 300, 1001])
@pytest.mark.parametrize("t,s,v", [(8, 16, 1), (8, 16, 3), (16, 16, 3), (32, 8, 3), (3, 1, 2)])
def test_stride_indices_match_a_padded_slice(n, t, s, v):
    """The official statement: pad the frame list with its last frame, then slice start::s."""
    span = (t - 1) * s + 1
    frames = list(range(n)) + [n - 1] * max(0, span - n)
    slide = len(frames) - span
    starts = [slide // 2] if v == 1 else [round(slide / (v - 1) * j) for j in range(v)]
    want = [frames[st:st + t * s:s] for st in starts]
    assert stride_indices(n, t, s, v) == want


@pytest.mark.parametrize("args,name", [((0, 8, 16), "num_video_frames"), ((10, 0, 16), "num_frames"),
                                       ((10, 8, 0), "stride"), ((10, 8, -2), "stride"),
                                       ((10, 8, 16, 0), "num_clips"), ((10, 8, 1.5), "stride"),
                                       ((10, 8, float("nan")), "stride"), ((10, None, 16), "num_frames")])
def test_stride_indices_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        stride_indices(*args)


# ---- resize and crops (§8-§9) -----------------------------------------------------------------


def official(frames_u8, size, num_crops, num_clips, mean=CLIP_MEAN, std=CLIP_STD):
    """The official test-time statement written out (whole clip as one tensor), for frames that are
    already the sampled ones, clip after clip: -> [V, T, 3, S, S]."""
    x = torch.as_tensor(np.stack(frames_u8)).float() / 255.
    x = (x - torch.Tensor(list(mean))) / torch.Tensor(list(std))
    x = x.permute(3, 0, 1, 2)                        # C, F, H, W
    h, w = x.shape[-2:]
    if h < w:
        nh, nw = size, w * size // h
    else:
        nh, nw = h * size // w, size
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    if num_crops == 1:
        top, left = (nh - size) // 2, (nw - size) // 2
        crops = [x[:, :, top:top + size, left:left + size]]
    else:
        margin = max(nh, nw) - size
        crops = [x[:, :, st:st + size, :] if nh > nw else x[:, :, :, st:st + size]
                 for st in (0, margin // 2, margin)]
    t = x.shape[1] // num_clips
    views = [c[:, j * t:(j + 1) * t] for c in crops for j in range(num_clips)]   # crop-major
    return torch.stack(views).permute(0, 2, 1, 3, 4).numpy()                    # [V, T, C, S, S]


def bilinear_loop(img, out_h, out_w):
    """Per-pixel bilinear resampling with half-pixel centres, no antialiasing (float64)."""
    in_h, in_w = img.shape[:2]
    out = np.zeros((out_h, out_w) + img.shape[2:])

    def taps(o, n_in, n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    for y in range(out_h):
        y0, y1, ly = taps(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = taps(x, in_w, out_w)
            out[y, x] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                         + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
    return out


def random_frames(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_resized_size_and_offsets_hand_values():
    assert evl_resized_size(320, 240, 224) == (298, 224)        # 320 * 224 // 240 = 298.67 -> 298
    assert evl_resized_size(240, 320, 224) == (224, 298)
    assert evl_resized_size(256, 256, 224) == (224, 224)
    assert evl_resized_size(341, 256, 224) == (298, 224)        # 298.375 -> 298
    assert evl_crop_offsets(298, 224, 224, 1) == [(37, 0)]
    assert evl_crop_offsets(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]   # start, middle, end
    assert evl_crop_offsets(224, 299, 224, 3) == [(0, 0), (0, 37), (0, 75)]
    assert evl_crop_offsets(224, 224, 224, 3) == [(0, 0)] * 3
    assert evl_crop_offsets(300, 260, 224, 1) == [(38, 18)]
    with pytest.raises(ValueError, match="three crops need the short side"):
        evl_crop_offsets(300, 260, 224, 3)


@pytest.mark.parametrize("h,w", [(24, 40), (40, 24), (21, 21), (13, 31)])
def test_one_frame_against_a_per_pixel_loop(h, w):
    """Normalise, then bilinear per pixel in float64: EVL's resize (floored size, half-pixel
    centres, no antialiasing even when shrinking), then the centre crop."""
    size = 8
    (frame,) = random_frames(1, h, w, seed=h * w)
    norm = (frame / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    nw, nh = (w * size // h, size) if h < w else (size, h * size // w)
    resized = bilinear_loop(norm, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    want = resized[top:top + size, left:left + size].transpose(2, 0, 1)
    got = preprocess_evl([frame], size=size, views="1x1")
    assert got.shape == (1, 1, 3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], want, atol=2e-5)


@pytest.mark.parametrize("h,w", [(48, 80), (80, 48), (36, 36)])   # landscape, portrait, square
@pytest.mark.parametrize("views", ["1x1", "1x3", "3x1", "3x3", "2x3"])
def test_matches_the_official_statement(h, w, views):
    """Same values as the official statement up to float rounding: PyTorch's CPU bilinear kernel
    rounds a frame differently (by about 1 ulp) depending on how many frames share the call (ours:
    one; the official: the whole video)."""
    n, m = (int(x) for x in views.split("x"))
    t = 4
    frames = random_frames(n * t, h, w, seed=h + w + n)
    got = preprocess_evl(frames, size=32, views=views)
    want = official(frames, 32, m, n)
    assert got.shape == (n * m, t, 3, 32, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # a frame's values depend on that frame alone
    np.testing.assert_array_equal(got[:, :1], preprocess_evl(frames[::t], size=32, views=views))
    # and one frame alone is the official statement on that frame bit for bit (one frame per call)
    np.testing.assert_array_equal(preprocess_evl(frames[:1], size=32, views=f"1x{m}"),
                                  official(frames[:1], 32, m, 1))


def test_three_crops_are_start_middle_end_along_the_long_side():
    # frames whose long side carries the pixel position (5 levels per pixel); the short side is
    # already S, so the resize is the identity and each crop's first pixel tells where it starts
    size = 16
    for h, w in ((16, 40), (40, 16)):
        y, x = np.mgrid[0:h, 0:w]
        img = np.repeat((5 * (x if w > h else y))[..., None], 3, axis=-1).astype(np.uint8)
        got = preprocess_evl([img], size=size, views="1x3")               # [3 crops, 1, 3, S, S]
        corner = got[:, 0, 0, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]           # back to 0..1
        assert np.rint(corner * 255 / 5).astype(int).tolist() == [0, 12, 24]   # margin 24: 0, 12, 24


def test_view_order_is_crop_major():
    frames = random_frames(6, 20, 30, seed=3)                           # 2 clips x 3 frames
    got = preprocess_evl(frames, size=20, views="2x3")
    for crop in range(3):
        for clip in range(2):
            alone = preprocess_evl(frames[clip * 3:(clip + 1) * 3], size=20, views="1x3")
            np.testing.assert_array_equal(got[crop * 2 + clip], alone[crop])


def test_repeated_frames_are_processed_once_and_equal():
    (a,) = random_frames(1, 20, 30)
    b = a.copy()
    got = preprocess_evl([a, a, b], size=16, views="1x1")
    np.testing.assert_array_equal(got[0, 0], got[0, 1])
    np.testing.assert_array_equal(got[0, 0], got[0, 2])


def test_preprocess_bad_input():
    frames = random_frames(4, 20, 30)
    with pytest.raises(ValueError, match="views"):
        preprocess_evl(frames, 16, views="2x2")
    with pytest.raises(ValueError, match="multiple of 3"):
        preprocess_evl(frames, 16, views="3x1")
    with pytest.raises(ValueError, match="uint8"):
        preprocess_evl([f.astype(np.float32) for f in frames], 16)
    with pytest.raises(ValueError, match="share one size"):
        preprocess_evl(frames[:1] + random_frames(1, 22, 30), 16)
    with pytest.raises(ValueError, match="resize_short_side"):
        preprocess_evl(frames, 16, resize_short_side=15)


# ---- the spec --------------------------------------------------------------------------------


def test_evl_spec_dict():
    spec = evl_preprocessing(8, 16)
    assert spec["family"] == "evl" and spec["sampling"] == "stride" and spec["views"] == "3x1"
    assert (spec["num_frames"], spec["stride"], spec["crop"], spec["resize_short_side"]) == (8, 16, 224, 224)
    assert spec["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert spec["std"] == [0.26862954, 0.26130258, 0.27577711]
    assert spec["input_range"] == "0..1"
    p = parse_preprocessing(spec)
    assert (p.family, p.num_frames, p.stride, p.crop, p.views) == ("evl", 8, 16, 224, "3x1")
    assert parse_preprocessing(xclip_preprocessing(TINY)).family == "xclip"


@pytest.mark.parametrize("change,name", [
    ({"views": "1x2"}, "views"), ({"views": "3"}, "views"), ({"stride": 0}, "stride"),
    ({"stride": 1.5}, "stride"), ({"stride": float("nan")}, "stride"), ({"stride": "16"}, "stride"),
    ({"num_frames": 0}, "num_frames"), ({"num_frames": float("inf")}, "num_frames"), ({"crop": 0}, "crop"),
    ({"family": "slowfast"}, "family"), ({"sampling": "tsn-center"}, "sampling"),
    ({"input_range": "0..255"}, "input_range"), ({"mean": [0.5, 0.5]}, "mean"), ({"std": [1, 0, 1]}, "std"),
    ({"resize_short_side": 200}, "resize_short_side"), ({"colour": "RGB"}, "unknown keys"),
    ({"resize_rounding": "round"}, "resize_rounding"), ({"color": "BGR"}, "color"),
])
def test_bad_specs_name_the_key(change, name):
    spec = {**evl_preprocessing(8, 16), **change}
    with pytest.raises(ValueError, match=name):
        parse_preprocessing(spec)


def test_bad_spec_arguments():
    with pytest.raises(ValueError, match="stride"):
        evl_preprocessing(8, 0)
    with pytest.raises(ValueError, match="views"):
        evl_preprocessing(8, 16, views="1x2")
    with pytest.raises(ValueError, match="must be a dict"):
        parse_preprocessing("evl")


# ---- reading files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evl-clips")
    return {n: write_index_video(folder / f"v{n}.mp4", n, "h264", size=(128, 64)) for n in (10, 16, 40)}


def spec_of(t, s, size, views="3x1"):
    return {**evl_preprocessing(t, s, size), "views": views}


def taken(clip, size):
    """The frame indices a [V, T, 3, S, S] clip shows, read from the index blocks of its start crop
    (short side == S, so the resize is the identity)."""
    x = clip * np.asarray(CLIP_STD, np.float32)[:, None, None] + np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return [[decode_index(f.transpose(1, 2, 0)) for f in view] for view in u8]


@pytest.mark.parametrize("n,views,want", [
    (10, "1x3", [[0, 5, 9, 9]]),                                          # padded
    (16, "1x3", [[0, 5, 10, 15]]),                                        # exact length
    (40, "1x3", [[12, 17, 22, 27]]),                                      # long: slide 24, centred
    (40, "3x3", [[0, 5, 10, 15], [12, 17, 22, 27], [24, 29, 34, 39]]),    # three temporal views
])
def test_read_video_takes_the_expected_frames(index_videos, n, views, want):
    spec = spec_of(4, 5, 64, views)
    clip = read_video(index_videos[n], preprocessing=spec)
    nclips = int(views.split("x")[0])
    assert clip.shape == (nclips * 3, 4, 3, 64, 64) and clip.dtype == np.float32
    assert taken(clip[:nclips], 64) == want                  # the start crops hold the index blocks
    # and the whole tensor is the transform of exactly those decoded frames
    frames = read_frames(index_videos[n], [i for c in want for i in c])
    np.testing.assert_array_equal(clip, preprocess_evl(frames, 64, views))


def test_read_video_spec_default_views_and_resize(index_videos):
    spec = evl_preprocessing(4, 5, 32)               # views "3x1": 3 temporal views, centre crop
    clip = read_video(index_videos[40], preprocessing=spec)
    assert clip.shape == (3, 4, 3, 32, 32)
    frames = read_frames(index_videos[40], [i for c in stride_indices(40, 4, 5, 3) for i in c])
    np.testing.assert_allclose(clip, official(frames, 32, 1, 3), rtol=0, atol=1e-6)
    one = read_video(index_videos[40], views="1x1", preprocessing=spec)
    np.testing.assert_array_equal(one[0], clip[1])   # the centred clip is the middle of 3 here (slide 24)


def test_read_clip_with_an_evl_spec(index_videos, monkeypatch):
    spec = evl_preprocessing(4, 5, 32)
    want = read_video(index_videos[16], preprocessing=spec)
    np.testing.assert_array_equal(read_clip(index_videos[16], preprocessing=spec), want)
    np.testing.assert_array_equal(read_clip(index_videos[16], 4, 32, preprocessing=spec, decoder="pyav"), want)
    monkeypatch.setattr(decoders, "dali_installed", lambda: True)      # auto never picks DALI for EVL
    monkeypatch.setattr(decoders, "_read_dali", lambda *a, **k: pytest.fail("DALI used for EVL"))
    np.testing.assert_array_equal(read_clip(index_videos[16], preprocessing=spec, decoder="auto",
                                            device="gpu"), want)
    with pytest.raises(DecoderUnavailableError, match="'dali' does not implement EVL.*'auto' or 'pyav'"):
        read_clip(index_videos[16], preprocessing=spec, decoder="dali")
    with pytest.raises(ValueError, match="num_frames = 8 disagrees"):
        read_clip(index_videos[16], 8, 32, preprocessing=spec)
    with pytest.raises(ValueError, match="size = 224 disagrees"):
        read_video(index_videos[16], size=224, preprocessing=spec)


def test_xclip_spec_reads_as_before(index_videos):
    spec = xclip_preprocessing(TINY)                  # 4 frames, 32 px
    want = read_video(index_videos[40], 4, 32, "1x1")
    np.testing.assert_array_equal(read_video(index_videos[40], preprocessing=spec), want)
    np.testing.assert_array_equal(read_clip(index_videos[40], preprocessing=spec, decoder="pyav"), want)
    np.testing.assert_array_equal(read_clip(index_videos[40], 4, 32, "2x3", decoder="pyav"),
                                  read_video(index_videos[40], 4, 32, "2x3"))
    with pytest.raises(ValueError, match="needs num_frames and size"):
        read_clip(index_videos[40])


def test_timeline_windows_with_an_evl_spec(index_videos):
    from xclip_engine.engine.video.timeline import classify_windows, window_indices

    times = np.arange(90) / 30.0
    assert window_indices(times, 1.0, 2.0, 4, frame_stride=5) == [30 + i for i in (7, 12, 17, 22)]  # slide 14
    assert window_indices(times, 2.85, 3.0, 4, frame_stride=5) == [86, 89, 89, 89]                 # padded

    class Fake:   # what classify_windows asks of a model: text features and logits per window
        preprocessing = evl_preprocessing(4, 5, 32)
        seen = []

        def encode_text(self, labels):
            return labels

        def logits(self, pixels, text):
            self.seen.append(np.asarray(pixels))
            return torch.zeros(len(pixels), len(text))

    model = Fake()
    tl = classify_windows(model, index_videos[40], ["a", "b"], window=60, stride=60)
    assert len(tl["windows"]) == 1 and tl["windows"][0]["scores"] == pytest.approx([0.5, 0.5])
    np.testing.assert_array_equal(model.seen[0], read_video(index_videos[40], views="1x1",
                                                            preprocessing=Fake.preprocessing))
    with pytest.raises(DecoderUnavailableError, match="'dali' does not implement EVL"):
        classify_windows(model, index_videos[40], ["a"], window=1, stride=1, decoder="dali")


def test_one_decode_that_stops_after_the_last_frame_needed(tmp_path):
    from xclip_engine.engine.video.reader import DecodeStats

    path = write_index_video(tmp_path / "long.mp4", 200, "h264", size=(128, 64))   # one GOP (keyint 250)
    stats = DecodeStats()
    clip = read_video(path, views="3x3", preprocessing=spec_of(4, 5, 64), stats=stats)
    # slide 184: starts 0, 92, 184; the start crops show those frames
    assert taken(clip[:3], 64) == [[0, 5, 10, 15], [92, 97, 102, 107], [184, 189, 194, 199]]
    assert stats.full_passes == 0 and stats.frames_decoded <= 200          # each frame at most once
    stats = DecodeStats()
    clip = read_video(path, views="1x3", preprocessing=spec_of(4, 5, 64), stats=stats)
    assert taken(clip[:1], 64) == [[92, 97, 102, 107]]
    assert stats.full_passes == 0 and stats.frames_decoded <= 108          # not past frame 107
