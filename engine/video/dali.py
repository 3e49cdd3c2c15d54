"""NVIDIA DALI decoding + X-CLIP preprocessing: the same frames and steps as ``engine.video.reader``.

What is ours and what is DALI's:

* Which frames: computed here with the official rules (``sampling``) on the frame count
  from PyAV's packet index (no decoding), then handed to DALI's ``fn.decoders.video`` through its
  ``frames`` argument (explicit indices, any order, repeats allowed; DALI seeks with its own
  keyframe index). Its frame ``k`` is the k-th frame in presentation order, as ours. DALI counts
  the frames itself; an index at or past its count is an error (``pad_mode="none"``), never a
  padded frame, so a file where the two counts differ fails here (and ``read_clip`` with
  ``auto`` reads it with PyAV) instead of giving black frames.
* Geometry: the resized size (mmcv's rounding, ``rescaled_size``) and the crop anchors
  (``(w - S) // 2`` or the official three crops) are computed here and passed per sample, so the
  crops sit on exactly the pixels the PyAV path crops.
* Pixels: DALI decodes to RGB, resizes with ``interp_type=LINEAR, antialias=False`` (the closest
  it has to OpenCV's INTER_LINEAR that mmcv uses), slices the crops and normalizes with the CLIP
  mean/std into ``[F, 3, S, S]`` float32. The values differ a little from PyAV + OpenCV because
  the YUV->RGB conversion (libswscale vs DALI's own) and the bilinear arithmetic (OpenCV's
  fixed-point weights vs DALI's float) round differently; tests/video measure it.

Devices: ``device_id=None`` runs DALI's CPU operators (its CPU decoder reads VP8, VP9 and MJPEG
only); on a GPU the decoder runs as ``device="mixed"`` (NVDEC: VP8, VP9, MJPEG, AV1, MPEG-4,
H.264, HEVC, 8-bit 4:2:0 only; ``engine.video.decoders.dali_refusal`` keeps other files away) and the
rest on the GPU. Each call decodes one file as one DALI sample (``read_clip_dali``,
``read_index_clips``); the one-sample pipelines are cached per thread.

Not handled by DALI: the display matrix (rotated phone videos come out as stored, not upright):
``choose_decoder('auto')`` does not route such files here (see ``engine.video.decoders``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .decoders import DALI_CPU_CODECS, DALI_INSTALL, DecoderUnavailableError, device_id
from .reader import VideoError, VideoFile, no_av_errors
from .sampling import sample_clip_indices
from .transforms import MEAN, STD, parse_views, rescaled_size, resize_target, three_crop_offsets

MAX_CACHED_PIPES = 4
# fn.decoders.video's default pad_mode ("constant") fills a requested frame past the end of the
# video (by DALI's own frame count) with fill_value, i.e. black, without any error; "none" makes
# such an index an error ("Unexpected out-of-bounds frame index ..."). Our indices come from
# PyAV's count, so an out-of-range one means the two disagree about the file: fail, do not pad.
DECODE_ARGS = {"pad_mode": "none"}


def _dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn  # noqa: F401 - submodules used by the pipeline
        import nvidia.dali.types  # noqa: F401
    except ImportError as e:
        raise DecoderUnavailableError(f"the DALI decoder needs NVIDIA DALI ({e}): `{DALI_INSTALL}`, "
                                      "or use decoder 'pyav' / 'auto'") from None
    return dali


@dataclass
class ClipPlan:
    """Everything DALI needs for one sample, computed without decoding."""

    path: str
    frames: np.ndarray            # int32 [num_clips * T] presentation-order indices, clip after clip
    resized: tuple[int, int]      # (h, w) after the short-side resize
    anchors: list[tuple[int, int]]  # (x, y) of each crop in the resized frame, official order
    num_clips: int
    codec: str = ""               # FFmpeg's codec name (DALI's CPU decoder reads only a few)

    def encoded(self) -> np.ndarray:
        """The whole file as bytes: DALI's decoder reads videos from memory."""
        try:
            return np.fromfile(self.path, dtype=np.uint8)
        except OSError as e:
            raise VideoError(self.path, f"cannot be read ({e.strerror}); check the file") from None


def plan_clip(path, num_frames: int, size: int, views: str = "1x1", seed: int | None = 0,
              clips: Sequence[Sequence[int]] | None = None) -> ClipPlan:
    """Frame indices and geometry of one sample. ``clips`` gives the frame indices explicitly
    (one list per clip, e.g. timeline windows); otherwise the official sampling for ``views``."""
    num_clips, num_crops = parse_views(views)
    size = int(size)
    if size < 1 or int(num_frames) < 1:
        raise ValueError(f"size ({size}) and num_frames ({num_frames}) must be >= 1")
    with no_av_errors(path), VideoFile(path) as video:
        n = video.num_frames
        ctx = video.stream.codec_context
        # the codec's name, not the decoder's (libdav1d decodes av1)
        width, height = int(ctx.width), int(ctx.height)
        codec = getattr(ctx.codec, "canonical_name", None) or ctx.name
    if clips is None:
        clips = sample_clip_indices(n, num_frames, num_clips, seed)
    else:
        num_clips = len(clips)
        bad = [i for clip in clips for i in clip if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"{path}: frame indices {bad[:5]} out of range, the video has {n} frames")
    if width < 1 or height < 1:
        raise VideoError(path, f"the stream reports a {width}x{height} picture; re-encode it")
    short = resize_target(size) if num_crops == 1 else size
    new_w, new_h = rescaled_size(width, height, short)
    if num_crops == 1:
        anchors = [((new_w - size) // 2, (new_h - size) // 2)]
    else:
        anchors = list(three_crop_offsets(new_w, new_h, size))
    frames = np.asarray([int(i) for clip in clips for i in clip], dtype=np.int32)
    return ClipPlan(str(path), frames, (new_h, new_w), anchors, num_clips, codec)


def _build(dev: int | None, num_crops: int, size: int):
    """A one-sample DALI pipeline: encoded bytes + frame indices + (h, w) + crop anchors, fed through
    ``feed_input``, -> num_crops outputs ``[F, 3, S, S]`` float32."""
    dali = _dali()
    fn, types = dali.fn, dali.types
    gpu = dev is not None

    @dali.pipeline_def(batch_size=1, num_threads=2, device_id=dev, prefetch_queue_depth=1)
    def pipe():
        names = _input_names(num_crops)
        dtypes = [types.UINT8, types.INT32, types.FLOAT] + [types.INT32] * num_crops
        ins = [fn.external_source(name=nm, dtype=dt, ndim=1) for nm, dt in zip(names, dtypes)]
        enc, frames, rsize, anchors = ins[0], ins[1], ins[2], ins[3:]
        video = fn.decoders.video(enc, frames=frames, device="mixed" if gpu else "cpu", **DECODE_ARGS)
        # size = (h, w) per sample, computed with mmcv's rounding; no antialias, as cv2.INTER_LINEAR
        video = fn.resize(video, size=rsize, interp_type=types.INTERP_LINEAR, antialias=False)
        outs = []
        for anchor in anchors:
            crop = fn.slice(video, anchor, np.array([size, size], np.int32), axis_names="WH",
                            normalized_anchor=False, normalized_shape=False)
            outs.append(fn.crop_mirror_normalize(crop, dtype=types.FLOAT, output_layout="FCHW",
                                                 mean=list(MEAN), std=list(STD)))
        return tuple(outs)

    p = pipe()
    p.build()
    return p


def _input_names(num_crops: int) -> list[str]:
    return ["enc", "frames", "rsize"] + [f"anchor{j}" for j in range(num_crops)]


def _inputs(plan: ClipPlan) -> list[list[np.ndarray]]:
    """One batch-of-one column per pipeline input, in ``_input_names`` order."""
    cols = [[plan.encoded()], [plan.frames], [np.asarray(plan.resized, np.float32)]]
    return cols + [[np.asarray(anchor, np.int32)] for anchor in plan.anchors]


def _to_numpy(out) -> np.ndarray:
    return out.as_cpu().as_array() if hasattr(out, "as_cpu") else out.as_array()


def _assemble(plan: ClipPlan, crops: list[np.ndarray]) -> np.ndarray:
    """Per-crop ``[num_clips*T, 3, S, S]`` -> ``[V, T, 3, S, S]`` with view v = crop v // N of clip v % N."""
    n = plan.num_clips
    views = [c.reshape(n, -1, *c.shape[1:]) for c in crops]   # each [N, T, 3, S, S]
    return np.ascontiguousarray(np.concatenate(views, axis=0))


def _dali_reason(e: Exception) -> str:
    """The informative line of a DALI error (its text starts with "Critical error in pipeline:"
    and source locations such as "[/opt/dali/...cc:253]"; an operator's own message follows the
    pipeline-definition traceback, after a line "encountered:")."""
    lines = str(e).splitlines()
    after = [i for i, line in enumerate(lines) if line.strip() == "encountered:"]
    if after:
        lines = lines[after[0] + 1:]
    for line in lines:
        line = re.sub(r"^\s*(\[[^\]]*\.(cc|cu|h):\d+\]\s*)+", "", line).strip()
        if line and not line.startswith(("Critical error", "Current pipeline object", "C++ context")):
            return line[:300]
    return e.__class__.__name__


def _dali_error(path, dev, e: Exception) -> VideoError:
    where = "GPU" if dev is not None else "CPU"
    reason = _dali_reason(e)
    bounds = re.search(r"out-of-bounds frame index (\d+).*?(\d+) frames", reason)
    if bounds:
        # DECODE_ARGS: DALI's advice ("change pad_mode") would turn this into black frames
        reason = (f"frame {bounds.group(1)} was asked for, from PyAV's frame count, but DALI finds only "
                  f"{bounds.group(2)} frames in the file")
    return VideoError(path, f"DALI's {where} decoder failed ({reason}); use --decoder pyav, "
                      "or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`")


def _check_codec(plan: ClipPlan, dev) -> None:
    """DALI's CPU decoder refuses most codecs with a cryptic error: say it first, and plainly."""
    if dev is None and plan.codec not in DALI_CPU_CODECS:
        raise VideoError(plan.path, f"the video codec is {plan.codec}, which DALI's CPU decoder cannot read "
                         f"(it reads {', '.join(DALI_CPU_CODECS)}); use --decoder pyav or auto, or run on a GPU")


# One-sample pipelines kept for reuse (building one costs a decoder set-up, on a GPU more so).
# DALI pipelines are not thread-safe and API callers decode in threads: each use holds its lock.
_PIPES: dict = {}
_PIPES_LOCK = threading.Lock()


def _run_one(plan: ClipPlan, dev, size: int) -> np.ndarray:
    _check_codec(plan, dev)
    key = (dev, len(plan.anchors), size, threading.get_ident())
    inputs = _inputs(plan)
    with _PIPES_LOCK:
        pipe = _PIPES.pop(key, None)
    if pipe is None:
        pipe = _build(dev, len(plan.anchors), size)
    try:
        for name, col in zip(_input_names(len(plan.anchors)), inputs):
            pipe.feed_input(name, col)
        outs = pipe.run()
        result = _assemble(plan, [_to_numpy(o)[0] for o in outs])
    except Exception as e:  # noqa: BLE001 - DALI raises RuntimeError/IndexError with its own text
        # after an error DALI's pipeline is no longer valid: drop it (a new one is built next time)
        raise _dali_error(plan.path, dev, e) from None
    with _PIPES_LOCK:
        _PIPES[key] = pipe   # one per thread: concurrent callers never share a pipeline
        while len(_PIPES) > MAX_CACHED_PIPES:   # threads come and go (executors): keep the newest
            _PIPES.pop(next(iter(_PIPES)))
    return result


def decode_frames_dali(path, indices: Sequence[int], device=None) -> np.ndarray:
    """Raw decoded frames ``[F, H, W, 3]`` uint8 RGB at presentation-order ``indices`` (as stored:
    no display-matrix rotation). For checks against PyAV's ``read_frames``."""
    dali = _dali()
    dev = device_id(device)
    plan = plan_clip(path, 1, 1, "1x1", clips=[list(indices)])
    _check_codec(plan, dev)

    @dali.pipeline_def(batch_size=1, num_threads=1, device_id=dev, prefetch_queue_depth=1)
    def pipe():
        enc = dali.fn.external_source(name="enc", dtype=dali.types.UINT8, ndim=1)
        frames = dali.fn.external_source(name="frames", dtype=dali.types.INT32, ndim=1)
        return dali.fn.decoders.video(enc, frames=frames, device="mixed" if dev is not None else "cpu",
                                      **DECODE_ARGS)

    p = pipe()
    p.build()
    try:
        p.feed_input("enc", [plan.encoded()])
        p.feed_input("frames", [plan.frames])
        (out,) = p.run()
    except Exception as e:  # noqa: BLE001 - DALI's own error types
        raise _dali_error(plan.path, dev, e) from None
    return _to_numpy(out)[0]


def read_clip_dali(path, num_frames: int, size: int, views: str = "1x1", device=None,
                   seed: int | None = 0) -> np.ndarray:
    """One video -> ``[V, T, 3, S, S]`` float32 via DALI (the frames ``read_video`` samples)."""
    _dali()
    return _run_one(plan_clip(path, num_frames, size, views, seed), device_id(device), int(size))


def read_index_clips(path, clips: Sequence[Sequence[int]], size: int, device=None) -> np.ndarray:
    """Explicit frame indices (one list of T per clip) -> ``[len(clips), T, 3, S, S]`` centre crops.

    All clips go into one DALI sample, so the file is loaded and indexed once per call."""
    _dali()
    clips = [list(c) for c in clips]
    if not clips or len({len(c) for c in clips}) != 1 or not clips[0]:
        raise ValueError("clips must be a non-empty list of equally long, non-empty index lists")
    plan = plan_clip(path, len(clips[0]), size, "1x1", clips=clips)
    return _run_one(plan, device_id(device), int(size))
