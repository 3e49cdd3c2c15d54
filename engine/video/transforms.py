"""Test-time spatial preprocessing of X-CLIP: resize, crop(s), normalize, stack views.

Source: microsoft/VideoX X-CLIP (commit 1744b21) datasets/build.py:285-300 (the val pipeline)
and datasets/pipeline.py, with the mmcv helpers those transforms call.

* One crop: ``Resize(scale=(-1, int(256 / 224 * S)))`` (build.py:245, 289) then
  ``CenterCrop(S)`` (build.py:290). Resize with ``(-1, s)`` rescales the short side to s
  (pipeline.py:998-1000, 1050) through ``mmcv.rescale_size``: factor ``s / min(h, w)``, new size
  ``int(w * factor + 0.5), int(h * factor + 0.5)``, then ``mmcv.imresize`` = ``cv2.resize`` with
  INTER_LINEAR ("bilinear", no antialiasing). CenterCrop: ``left = (w - S) // 2``,
  ``top = (h - S) // 2`` (pipeline.py:1412-1413).
* Three crops (TEST.NUM_CROP == 3, build.py:296-298): the short side goes to S itself, then
  ``ThreeCrop`` (pipeline.py:1477-1547) with step ``(long - S) // 2`` and the crop order
  left/top, right/bottom (offset 2 * step), middle (offset step) (pipeline.py:1513-1524).
* ``Normalize`` (build.py:34-35, pipeline.py:1293-1340): RGB (no BGR swap) float32 values
  ``(x - mean) / std`` with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375).
  mmcv computes it with cv2 on float64 scalars made from the float32 mean and 1 / std; the
  lookup table below reproduces those values exactly (the input is uint8 after the resize).
* View order: frames are sampled clip after clip, ThreeCrop appends all frames of crop 0, then
  crop 1, then crop 2 (pipeline.py:1529-1536), and main.py:203-206 reshapes to
  ``[n_views, T]``. So view ``v`` is crop ``v // num_clips`` of clip ``v % num_clips``;
  for "4x3": views 0-3 left (top) crops of clips 0-3, 4-7 right (bottom), 8-11 middle.
  main.py:209-220 averages the per-view softmax scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# one definition, in the model config; the names MEAN / STD stay for the video modules and callers
from ..config import IMAGE_MEAN as MEAN
from ..config import IMAGE_STD as STD
from .preprocessing import parse_views  # noqa: F401 - one "NxM" parser for both families, named here too


def resize_target(size: int) -> int:
    """Short side before the single center crop: ``int(256 / 224 * size)`` (256 for 224)."""
    return int(256 / 224 * size)


def rescaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(new_w, new_h) when the short side becomes ``short_side``, rounded as mmcv does."""
    factor = short_side / min(height, width)
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize_short_side(img: np.ndarray, short_side: int) -> np.ndarray:
    """Resize an HxWxC image keeping its aspect ratio so that its short side is ``short_side``."""
    h, w = img.shape[:2]
    new_w, new_h = rescaled_size(w, h, short_side)
    if (new_w, new_h) == (w, h):
        return img  # cv2 would return an identical copy
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image")
    left, top = (w - size) // 2, (h - size) // 2
    return img[top:top + size, left:left + size]


def three_crop_offsets(width: int, height: int, size: int) -> list[tuple[int, int]]:
    """(x, y) of the official three crops, in the official order: start, end, middle."""
    if height == size:  # the official code tests the height first, so a square image lands here
        step = (width - size) // 2
        return [(0, 0), (2 * step, 0), (step, 0)]
    if width == size:
        step = (height - size) // 2
        return [(0, 0), (0, 2 * step), (0, step)]
    raise ValueError(f"three crops need one side equal to {size}, got a {width}x{height} image")


def three_crop(img: np.ndarray, size: int) -> list[np.ndarray]:
    h, w = img.shape[:2]
    return [img[y:y + size, x:x + size] for x, y in three_crop_offsets(w, h, size)]


def normalize(images: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """uint8 RGB array [..., 3] -> float32 ``(x - mean) / std``, bit-identical to mmcv's Normalize."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"normalize expects uint8 RGB [..., 3], got {images.dtype} {images.shape}")
    # mmcv holds mean/std as float32, widens them to float64 and multiplies by 1/std in float64
    # before the float32 store; a 3x256 table of those values is exact and faster than the math.
    mean64 = np.float32(mean).astype(np.float64)
    stdinv64 = 1.0 / np.float32(std).astype(np.float64)
    lut = ((np.arange(256, dtype=np.float64)[None, :] - mean64[:, None]) * stdinv64[:, None])
    lut = lut.astype(np.float32)
    out = np.empty(images.shape, dtype=np.float32)
    for c in range(3):
        out[..., c] = lut[c][images[..., c]]
    return out


def preprocess(frames: Sequence[np.ndarray], size: int = 224, views: str = "1x1",
               mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """Decoded frames -> model input ``[V, T, 3, size, size]`` float32.

    ``frames``: HxWx3 uint8 RGB images, clip after clip (``num_clips * T`` of them, e.g. what
    ``read_frames`` returns for the concatenated ``sample_clip_indices`` lists). View ``v`` is
    crop ``v // num_clips`` of clip ``v % num_clips`` (official order, see the module docstring).
    """
    num_clips, num_crops = parse_views(views)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if len(frames) == 0 or len(frames) % num_clips:
        raise ValueError(f"views {views!r} need a positive multiple of {num_clips} frames, "
                         f"got {len(frames)}")
    t = len(frames) // num_clips
    crops = np.empty((num_crops * num_clips, t, size, size, 3), dtype=np.uint8)
    for k, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {k}: expected an HxWx3 uint8 RGB image, "
                             f"got {frame.dtype} {frame.shape}")
        clip, ti = divmod(k, t)
        if num_crops == 1:
            crops[clip, ti] = center_crop(resize_short_side(frame, resize_target(size)), size)
        else:
            for j, crop in enumerate(three_crop(resize_short_side(frame, size), size)):
                crops[j * num_clips + clip, ti] = crop
    # Normalize after cropping (a per-pixel map, so the order is free) and go channel-first.
    return np.ascontiguousarray(normalize(crops, mean, std).transpose(0, 1, 4, 2, 3))


def average_views(scores, counts):
    """Per-view softmax scores [sum(counts), K] -> one row per video [len(counts), K]: the mean of
    each video's views, as the official multi-view test averages them."""
    import torch

    return torch.stack([g.mean(0) for g in scores.split(list(counts))])
