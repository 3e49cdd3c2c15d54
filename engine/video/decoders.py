"""Which decoder reads a video, and one entry point for both: ``read_clip``.

EVL's preprocessing (an EVL spec passed as ``preprocessing=``) is PyAV's only: ``auto`` reads such
videos with PyAV and a forced ``dali`` raises ``DecoderUnavailableError``. For X-CLIP, two
decoders produce the same input ``[V, T, 3, S, S]`` float32 (official TSN indices,
short side to ``int(256/224*S)``, centre crop or three crops, ImageNet mean/std on 0..255):

* ``pyav``: ``engine.video.read_video`` (FFmpeg through PyAV, every codec, exact frames, OpenCV
  bilinear resize as mmcv does). The reference.
* ``dali``: ``engine.video.dali`` (NVIDIA DALI). On a GPU its decoder hands VP8, VP9, MJPEG,
  AV1, MPEG-4, H.264 and HEVC to NVDEC, and converts only 8-bit 4:2:0 pictures correctly;
  without a GPU, DALI's CPU decoder reads only VP8, VP9 and MJPEG (it refuses H.264, HEVC,
  MPEG-4 and AV1). Its YUV->RGB conversion and resize differ slightly from FFmpeg + OpenCV, so
  its tensors are close to, not equal to, PyAV's (tests/video measure the difference).

``auto`` picks DALI when it is installed and can read the file here (codec and pixel format, see
``dali_refusal``) and PyAV otherwise, and always PyAV for videos with a display rotation (DALI
ignores it). The probe reads the header and decodes the first frame only. On top of that,
``read_clip`` with ``auto``:

* retries a file with PyAV when DALI fails on it (a forced ``dali`` reports DALI's error);
* checks DALI against PyAV on the first clip DALI decodes in the process, per device, and uses
  PyAV for the rest of the process when they disagree (``DALI_CHECK_MAX_GAP``, one warning).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import warnings
from typing import NamedTuple

import av
import numpy as np

from .reader import DecodeStats, VideoError, collect_stats, frame_matrix, read_video

DECODERS = ("auto", "dali", "pyav")
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")   # what DALI's CPU video decoder accepts
# What DALI's mixed (GPU) decoder hands to NVDEC (fn.decoders.video docs, DALI 2.x), as FFmpeg
# names the codecs ...
DALI_GPU_CODECS = ("vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc")
# ... and the pixel formats it decodes correctly: DALI creates its NVDEC decoder with the default
# NV12 output surface and converts NV12 (8 bits) to RGB, so 10/12-bit pictures (NVDEC would need a
# P016 surface) and 4:2:2 / 4:4:4 ones (which NVDEC does not decode at all for H.264 on most GPUs)
# are either refused by NVDEC or come out wrong. Monochrome (gray) is left out for the same reason.
DALI_GPU_PIX_FMTS = ("yuv420p", "yuvj420p", "nv12")
DALI_INSTALL = "pip install nvidia-dali-cuda120"

# First-clip check (read_clip): the largest per-frame mean |DALI - PyAV|, in normalized units
# (1 unit = one CLIP std, ~57 of 255 levels), after 8x8 average pooling of both clips.
# Measured on DALI's CPU operators (VP9 and MJPEG, 64x48 to 320x240, S = 32..224, 1x1 and 4x3):
# 0.011-0.025 on smooth clips (tests/video_factory index clips, ~1.2 of 255 levels: libswscale vs
# DALI chroma upsampling and OpenCV's fixed-point bilinear vs DALI's float). Without pooling, clips
# full of sharp colour edges (random 8x8 colour blocks, noise) reach 0.16, because the two chroma
# upsamplers disagree by up to ~110 levels right at the edges; pooling averages that out (at most
# 0.048 on those clips) while a wrong picture still shows: a black frame is ~2, the clip backwards
# 0.13, the next frame of a moving clip 0.05-0.9 (a shift by one frame is caught only where
# consecutive frames differ that much). The bound is 3x the smooth-clip gap.
DALI_CHECK_MAX_GAP = 0.075
DALI_CHECK_POOL = 8

_log = logging.getLogger(__name__)


class DecoderUnavailableError(ValueError):
    """The requested decoder cannot run in this environment at all (not a property of one file).

    A ValueError so that command lines treat it as a usage error (fix the flag or install)."""


class DecoderMismatchWarning(RuntimeWarning):
    """DALI's decode of the first clip disagreed with PyAV's (see ``DALI_CHECK_MAX_GAP``)."""


class VideoProbe(NamedTuple):
    codec: str     # FFmpeg's codec name: h264, hevc, vp9, mjpeg, av1, mpeg4, ...
    pix_fmt: str   # FFmpeg's pixel format: yuv420p, yuvj422p, yuv420p10le, ... ("" if unknown)
    rotated: bool  # frames carry a display matrix other than the identity


class DaliCheck(NamedTuple):
    """Outcome of the first-clip check on one device (``dali_check``)."""

    ok: bool
    gap: float     # the measured difference (inf when the shapes differ)
    path: str      # the clip it was measured on


def dali_installed() -> bool:
    """True when ``nvidia.dali`` can be imported (checked without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):   # a broken `nvidia` namespace package
        return False


def _gpu_present() -> bool:
    import torch  # imported here: choosing a decoder need not load torch before it is used

    return bool(torch.cuda.is_available())


def resolve_device(device=None) -> str:
    """``None`` -> "gpu" when CUDA is available, else "cpu"; accepts "cpu", "gpu", "cuda", "cuda:N"."""
    if device is None:
        return "gpu" if _gpu_present() else "cpu"
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name in ("gpu", "cuda", "mixed") or name.startswith("cuda:"):
        return "gpu"
    raise ValueError(f"device {device!r} is not understood; use None (auto), 'cpu', 'gpu' or 'cuda[:N]'")


def device_id(device=None) -> int | None:
    """DALI's device_id for ``device``: None on CPU, the CUDA ordinal on a GPU ("cuda:1" -> 1)."""
    if resolve_device(device) == "cpu":
        return None
    name = str(device or "").strip().lower()
    if name.startswith("cuda:"):
        try:
            return int(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"device {device!r}: the part after 'cuda:' must be a GPU number") from None
    return 0


def probe_video(path, rotation_codecs=None) -> VideoProbe:
    """``(codec, pix_fmt, rotated)`` of the first video stream: FFmpeg's codec name (``h264``,
    ``vp9``, ``mjpeg``, ...; the codec, not the decoder, e.g. ``av1`` even where libdav1d decodes
    it), its pixel format and whether frames carry a display matrix other than the identity.

    Reads the header and decodes the first frame only (PyAV exposes the display matrix on frames,
    not on the stream); DALI ignores that matrix, so rotated videos must go to PyAV. The frame is
    decoded only for codecs in ``rotation_codecs`` (None: every codec): for a file that goes to
    PyAV anyway the rotation does not matter, and its decode would be wasted. Where a frame is
    decoded, its pixel format is the one reported (the header's can be unset). Raises
    ``VideoError`` for files that do not open or have no video stream, with the usual advice."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(path, "file not found; check the path" if not os.path.exists(path)
                         else "not a file (a directory?); pass the path of a video file")
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream (audio only?); pass a video file")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            codec = getattr(ctx.codec, "canonical_name", None) or ctx.name
            pix_fmt = ctx.pix_fmt or ""
            matrix = None
            if rotation_codecs is None or codec in rotation_codecs:
                with contextlib.suppress(av.FFmpegError, StopIteration):
                    frame = next(container.decode(stream))
                    matrix = frame_matrix(frame)
                    pix_fmt = frame.format.name or pix_fmt
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg, OS and format-probing errors alike
        raise VideoError(path, f"cannot be opened as a video ({e.__class__.__name__}: {e}); it is damaged, "
                         "truncated or not a video: download it again or re-encode it, e.g. "
                         "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from None
    rotated = matrix is not None and [int(v) for v in list(matrix)[:5]] != [65536, 0, 0, 0, 65536]
    return VideoProbe(codec, pix_fmt, rotated)


def _check_decoder(decoder: str) -> str:
    name = str(decoder).strip().lower()
    if name not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    return name


def dali_refusal(probe: VideoProbe, on_gpu: bool) -> str | None:
    """Why DALI cannot read a video with ``probe``'s codec and pixel format here (None: it can)."""
    if not on_gpu:
        # DALI's CPU decoder converts any pixel format with libswscale: only the codec matters
        if probe.codec not in DALI_CPU_CODECS:
            return (f"the video codec is {probe.codec}, which DALI's CPU decoder cannot read (it reads "
                    f"{', '.join(DALI_CPU_CODECS)}); use --decoder pyav or auto, or run on a GPU")
        return None
    if probe.codec not in DALI_GPU_CODECS:
        return (f"the video codec is {probe.codec}, which DALI's GPU decoder cannot read (it reads "
                f"{', '.join(DALI_GPU_CODECS)}); use --decoder pyav or auto")
    if probe.pix_fmt not in DALI_GPU_PIX_FMTS:
        return (f"the video's pixel format is {probe.pix_fmt or 'unknown'}, which DALI's GPU decoder does not "
                f"convert correctly (it takes 8-bit 4:2:0: {', '.join(DALI_GPU_PIX_FMTS)}); use --decoder "
                "pyav or auto, or re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`")
    return None


# -- first-clip check state: device_id (None = CPU) -> DaliCheck; a device absent = not checked yet
_DALI_CHECKED: dict = {}
_DALI_CHECK_LOCK = threading.Lock()


def dali_check(device=None) -> DaliCheck | None:
    """The first-clip check's outcome on ``device`` in this process (None: not run yet)."""
    return _DALI_CHECKED.get(device_id(device))


def choose_decoder(path, decoder: str = "auto", device=None) -> str:
    """The decoder that will read ``path``: "dali" or "pyav".

    ``auto``: DALI when it is installed and can read the file on ``device`` (``dali_refusal``:
    on a GPU VP8/VP9/MJPEG/AV1/MPEG-4/H.264/HEVC in 8-bit 4:2:0; on the CPU VP8/VP9/MJPEG), is not
    rotated, and has not failed the first-clip check on this device; else PyAV. A forced ``dali``
    raises ``DecoderUnavailableError`` when DALI is not installed and ``VideoError`` when DALI
    cannot read the file here or the video is rotated (DALI ignores the display matrix); a forced
    ``pyav`` is always possible. Costs one header read, plus one frame decode where DALI could
    read the codec.
    """
    decoder = _check_decoder(decoder)
    if decoder == "pyav":
        return "pyav"
    on_gpu = resolve_device(device) == "gpu"
    if not dali_installed():
        if decoder == "dali":
            raise DecoderUnavailableError(f"decoder 'dali' needs NVIDIA DALI, which is not installed: "
                                          f"`{DALI_INSTALL}` (or use decoder 'pyav' / 'auto')")
        return "pyav"
    if decoder == "auto":
        check = _DALI_CHECKED.get(device_id(device))
        if check is not None and not check.ok:
            return "pyav"   # DALI disagreed with PyAV on this device's first clip
    # the rotation matters only where DALI would read the file
    probe = probe_video(path, DALI_GPU_CODECS if on_gpu else DALI_CPU_CODECS)
    if probe.rotated:
        if decoder == "dali":
            raise VideoError(path, "the video has a display rotation/flip, which DALI ignores (frames would "
                             "come out sideways); use --decoder pyav or auto")
        return "pyav"
    refusal = dali_refusal(probe, on_gpu)
    if refusal is None:
        return "dali"
    if decoder == "dali":
        raise VideoError(path, refusal)
    return "pyav"


def _clip_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest per-frame mean |a - b| of two ``[V, T, 3, S, S]`` clips after average pooling
    over ``DALI_CHECK_POOL`` pixel squares (see ``DALI_CHECK_MAX_GAP``); inf if the shapes differ.
    Per frame, so that one bad frame among many (a padded one) is not averaged away."""
    if a.shape != b.shape or a.ndim != 5:
        return float("inf")
    v, t, c, h, w = a.shape
    k = max(1, min(DALI_CHECK_POOL, h, w))
    h, w = h // k * k, w // k * k

    def pool(x):
        x = np.asarray(x, np.float64)[..., :h, :w]
        return x.reshape(v, t, c, h // k, k, w // k, k).mean(axis=(4, 6))

    gap = np.abs(pool(a) - pool(b)).mean(axis=(2, 3, 4)).max()
    return float(gap) if np.isfinite(gap) else float("inf")


def _read_dali(path, num_frames, size, views, device, forced):
    """DALI's clip; with ``auto`` (not ``forced``) any DALI failure falls back to PyAV."""
    from .dali import read_clip_dali

    try:
        return read_clip_dali(path, num_frames=num_frames, size=size, views=views, device=device)
    except Exception as e:  # noqa: BLE001 - DALI raises VideoError, RuntimeError, import errors, ...
        if forced:
            raise
        # auto promised a result where PyAV can give one: the reference decoder reads this file
        _log.info("DALI failed on %s (%s: %s); decoding it with PyAV", path, type(e).__name__, e)
    return read_video(path, num_frames=num_frames, size=size, views=views)


def _first_dali_clip(path, num_frames, size, views, device, forced, key):
    """Decode the first DALI clip of this process on this device with both decoders and record
    whether they agree. Called with ``_DALI_CHECK_LOCK`` held, so that other threads wait for
    the verdict instead of taking DALI's frames unchecked."""
    from .dali import read_clip_dali

    try:
        got = read_clip_dali(path, num_frames=num_frames, size=size, views=views, device=device)
    except Exception as e:  # noqa: BLE001 - as in _read_dali; no verdict yet: the next clip is checked
        if forced:
            raise
        _log.info("DALI failed on %s (%s: %s); decoding it with PyAV", path, type(e).__name__, e)
        return read_video(path, num_frames=num_frames, size=size, views=views)
    try:
        ref = read_video(path, num_frames=num_frames, size=size, views=views)
    except VideoError:
        return got   # PyAV cannot read this one: nothing to compare with, the next clip is checked
    gap = _clip_gap(got, ref)
    check = DaliCheck(gap <= DALI_CHECK_MAX_GAP, gap, os.fspath(path))
    _DALI_CHECKED[key] = check
    if check.ok:
        _log.info("DALI checked against PyAV on %s: difference %.4f (bound %s)", path, gap, DALI_CHECK_MAX_GAP)
        return got
    where = "CPU" if key is None else f"GPU {key}"
    then = ("decoder 'dali' keeps using DALI as asked: check its output, or use --decoder pyav" if forced
            else "decoder 'auto' uses PyAV for the rest of this process")
    shape = "" if got.shape == ref.shape else f" (DALI gave shape {got.shape}, PyAV {ref.shape})"
    warnings.warn(f"{check.path}: DALI's {where} decoder disagrees with PyAV on this first clip: worst-frame "
                  f"mean difference {gap:.3f}{shape}, where agreeing decoders differ by about 0.02 (bound "
                  f"{DALI_CHECK_MAX_GAP}, normalized units); {then}", DecoderMismatchWarning, stacklevel=3)
    return got if forced else ref


def read_clip(path, num_frames: int | None = None, size: int | None = None, views: str | None = None,
              decoder: str = "auto", device=None, *, stats: DecodeStats | None = None,
              preprocessing: dict | None = None) -> np.ndarray:
    """A video file -> model input ``[V, num_frames, 3, size, size]`` float32 (V = clips x crops).

    ``preprocessing``: the model's spec dict (``engine.video.preprocessing``); None is X-CLIP's
    rules with the given ``num_frames`` and ``size`` (both then required). ``views`` "NxM" = N
    temporal clips x M crops for every family (default: the spec's ``views``, else "1x1").

    X-CLIP: the PyAV path returns exactly ``engine.video.read_video(path, num_frames, size, views)``;
    the DALI path the same frames, preprocessed by DALI (close, not bit-equal). EVL (an EVL spec):
    always PyAV, ``read_video(path, views=views, preprocessing=spec)``; ``auto`` picks PyAV and
    a forced ``dali`` raises ``DecoderUnavailableError`` (DALI has no EVL path). Unusable files
    raise ``VideoError`` naming the file and what to do.

    With ``auto``, a file DALI fails on is read with PyAV. The first clip DALI decodes in the
    process on a device is also decoded with PyAV and compared (``DALI_CHECK_MAX_GAP``); when
    they disagree, one ``DecoderMismatchWarning`` names the file and the difference, that clip
    is PyAV's and ``auto`` uses PyAV on that device from then on (a forced ``dali`` keeps DALI).

    ``stats`` (``DecodeStats``) gets the reader's counters, on both paths: DALI decodes the indices
    sampled from PyAV's packet count, so the container's declared count and the frames found
    come from the same scan (``stats.warning(path)`` says when a truncated file lost frames).
    """
    if preprocessing is not None:
        from .preprocessing import resolve

        spec, num_frames, size, views = resolve(preprocessing, num_frames, size, views)
        if spec.family == "evl":
            if _check_decoder(decoder) == "dali":
                raise DecoderUnavailableError("decoder 'dali' does not implement EVL's preprocessing (stride "
                                              "sampling, float resize); use decoder 'auto' or 'pyav'")
            with collect_stats(stats):
                return read_video(path, views=views, preprocessing=preprocessing)
    elif num_frames is None or size is None:
        raise ValueError("read_clip needs num_frames and size (or a preprocessing spec that states them)")
    views = "1x1" if views is None else views
    with collect_stats(stats):
        return _read_clip(path, num_frames, size, views, decoder, device)


def _read_clip(path, num_frames, size, views, decoder, device) -> np.ndarray:
    chosen = choose_decoder(path, decoder, device)
    if chosen == "pyav":
        return read_video(path, num_frames=num_frames, size=size, views=views)
    forced = _check_decoder(decoder) == "dali"
    key = device_id(device)
    if key not in _DALI_CHECKED:
        with _DALI_CHECK_LOCK:
            if key not in _DALI_CHECKED:
                return _first_dali_clip(path, num_frames, size, views, device, forced, key)
    # the verdict can have come after choose_decoder looked (another thread ran the check)
    if not forced and not _DALI_CHECKED[key].ok:
        return read_video(path, num_frames=num_frames, size=size, views=views)
    return _read_dali(path, num_frames, size, views, device, forced)
