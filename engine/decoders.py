"""Which decoder reads a video, and one entry point for both: ``read_clip``.

Two decoders produce the same X-CLIP input ``[V, T, 3, S, S]`` float32 (official TSN indices,
short side to ``int(256/224*S)``, centre crop or three crops, CLIP mean/std):

* ``pyav``: ``engine.video.read_video`` (FFmpeg through PyAV, every codec, exact frames, OpenCV
  bilinear resize as mmcv does). The reference.
* ``dali``: ``engine.dali_pipeline`` (NVIDIA DALI). On a GPU it decodes every common codec with
  NVDEC; without one, DALI's CPU decoder reads only VP8, VP9 and MJPEG (it refuses H.264, HEVC,
  MPEG-4 and AV1). Its YUV->RGB conversion and resize differ slightly from FFmpeg + OpenCV, so its
  tensors are close to, not equal to, PyAV's (tests/video measure the difference).

``auto`` picks DALI when it is installed and can read the file here (any codec on a GPU; VP8, VP9
or MJPEG on CPU) and PyAV otherwise, and always PyAV for videos with a display rotation (DALI
ignores it). The probe reads the header and decodes the first frame only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import av
import numpy as np

from .video import VideoError, _frame_matrix, read_video

DECODERS = ("auto", "dali", "pyav")
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")   # what DALI's CPU video decoder accepts
DALI_INSTALL = "pip install nvidia-dali-cuda120"


class DecoderUnavailableError(ValueError):
    """The requested decoder cannot run in this environment at all (not a property of one file).

    A ValueError so that command lines treat it as a usage error (fix the flag or install)."""


def dali_installed() -> bool:
    """True when ``nvidia.dali`` can be imported (checked without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):   # a broken `nvidia` namespace package
        return False


def _gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
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


def probe_video(path, rotation_codecs=None) -> tuple[str, bool]:
    """(codec, rotated) of the first video stream: FFmpeg's codec name (``h264``, ``vp9``,
    ``mjpeg``, ...) and whether frames carry a display matrix other than the identity.

    Reads the header and decodes the first frame only (PyAV exposes the display matrix on frames,
    not on the stream); DALI ignores that matrix, so rotated videos must go to PyAV. The frame is
    decoded only for codecs in ``rotation_codecs`` (None: every codec): for a file that goes to
    PyAV anyway the rotation does not matter, and its decode would be wasted. Raises
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
            codec = stream.codec_context.name
            matrix = None
            if rotation_codecs is None or codec in rotation_codecs:
                with contextlib.suppress(av.FFmpegError, StopIteration):
                    matrix = _frame_matrix(next(container.decode(stream)))
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg, OS and format-probing errors alike
        raise VideoError(path, f"cannot be opened as a video ({e.__class__.__name__}: {e}); it is damaged, "
                         "truncated or not a video: download it again or re-encode it, e.g. "
                         "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from None
    rotated = matrix is not None and [int(v) for v in list(matrix)[:5]] != [65536, 0, 0, 0, 65536]
    return codec, rotated


def _check_decoder(decoder: str) -> str:
    name = str(decoder).strip().lower()
    if name not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    return name


def choose_decoder(path, decoder: str = "auto", device=None) -> str:
    """The decoder that will read ``path``: "dali" or "pyav".

    ``auto``: DALI when it is installed and can read the file on ``device`` (a GPU reads every
    codec; the CPU reads VP8/VP9/MJPEG), else PyAV. A forced ``dali`` raises
    ``DecoderUnavailableError`` when DALI is not installed and ``VideoError`` when its CPU decoder
    cannot read the file's codec or the video is rotated (DALI ignores the display matrix); a
    forced ``pyav`` is always possible. Costs one header read, plus one frame decode where DALI
    could read the file.
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
    # the rotation matters only where DALI would read the file: every codec on a GPU, a few on a CPU
    codec, rotated = probe_video(path, None if on_gpu else DALI_CPU_CODECS)
    if rotated:
        if decoder == "dali":
            raise VideoError(path, "the video has a display rotation/flip, which DALI ignores (frames would "
                             "come out sideways); use --decoder pyav or auto")
        return "pyav"
    if on_gpu or codec in DALI_CPU_CODECS:
        return "dali"
    if decoder == "dali":
        raise VideoError(path, f"the video codec is {codec}, which DALI's CPU decoder cannot read (it reads "
                         f"{', '.join(DALI_CPU_CODECS)}); use --decoder pyav or auto, or run on a GPU")
    return "pyav"


def read_clip(path, num_frames: int, size: int, views: str = "1x1", decoder: str = "auto",
              device=None) -> np.ndarray:
    """A video file -> X-CLIP input ``[V, num_frames, 3, size, size]`` float32 (V = clips x crops).

    The PyAV path returns exactly ``engine.video.read_video(path, num_frames, size, views)``;
    the DALI path the same frames, preprocessed by DALI (close, not bit-equal). Unusable files
    raise ``VideoError`` naming the file and what to do.
    """
    chosen = choose_decoder(path, decoder, device)
    if chosen == "pyav":
        return read_video(path, num_frames=num_frames, size=size, views=views)
    from .dali_pipeline import read_clip_dali

    return read_clip_dali(path, num_frames=num_frames, size=size, views=views, device=device)
