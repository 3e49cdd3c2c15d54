"""Test-time spatial preprocessing of EVL: to 0..1, CLIP mean/std, short side to S in float, crops.

Source: OpenGVLab/efficient-video-recognition, video_dataset/dataset.py (VideoDataset, test mode:
``__getitem__`` and ``_generate_spatial_crops``) and video_dataset/dataloader.py (mean/std as
float32 tensors); docs/preprocessing.md §8-§9.

* Values: ``frames.float() / 255.``, then ``(x - mean) / std`` in float32 (RGB, channels last);
  here through a table of those float32 ops applied to the 256 levels (the same values).
* Resize, in float, after normalising: the short side becomes S, the long side
  ``long * S // short`` (floor); ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)`` (no antialiasing), on the frames laid out ``[C, T, H, W]`` (here
  ``[3, 1, H, W]``: one frame per call).
* One crop: centre, ``top = (h - S) // 2``, ``left = (w - S) // 2``. Three crops: along the long
  side at ``0, margin // 2, margin`` (start, middle, end), ``margin = long - S``; the short side
  must then be exactly S. A square frame is cut along its width.
* Views: every spatial crop is cut into the temporal views, so view ``v`` is temporal clip
  ``v % N`` of crop ``v // N`` (``"NxM"``: N clips x M crops, as for X-CLIP).

Every step acts on each frame alone, so only the sampled frames are processed (the official code
processes the whole video, then picks); a frame shared by several views or repeated as padding
is processed once. The values equal the official ones up to float rounding, not bit for bit:
PyTorch's CPU bilinear kernel rounds by about 1 ulp differently depending on how many frames one
call holds (the official call holds the whole video); we resize one frame per call.
torch is imported when the function runs, not with the module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import CLIP_MEAN, CLIP_STD
from .preprocessing import parse_views


def evl_resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(new_w, new_h) after EVL's resize: short side ``short_side``, long side floored."""
    if height < width:
        return width * short_side // height, short_side
    return short_side, height * short_side // width   # the official `else` branch: a square too


def evl_crop_offsets(width: int, height: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """(x, y) of EVL's crops of a resized ``width`` x ``height`` frame, in the official order."""
    if num_crops == 1:
        if min(width, height) < size:
            raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
        return [((width - size) // 2, (height - size) // 2)]
    if num_crops == 3:
        if min(width, height) != size:
            raise ValueError(f"three crops need the short side equal to {size}, got a {width}x{height} image")
        margin = max(width, height) - size
        if height > width:
            return [(0, st) for st in (0, margin // 2, margin)]
        return [(st, 0) for st in (0, margin // 2, margin)]
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops!r}")


def preprocess_evl(frames: Sequence[np.ndarray], size: int = 224, views: str = "1x1",
                   mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                   resize_short_side: int | None = None) -> np.ndarray:
    """Decoded frames -> EVL input ``[V, T, 3, size, size]`` float32.

    ``frames``: HxWx3 uint8 RGB images of one video (all the same size), clip after clip
    (``num_clips * T`` of them). ``resize_short_side`` defaults to ``size`` (the official rule;
    three crops need it). View ``v`` is crop ``v // num_clips`` of clip ``v % num_clips``.
    """
    import torch
    import torch.nn.functional as F

    num_clips, num_crops = parse_views(views)
    size = int(size)
    short = size if resize_short_side is None else int(resize_short_side)
    if size < 1 or short < size:
        raise ValueError(f"size ({size}) must be >= 1 and resize_short_side ({short}) >= size")
    if len(frames) == 0 or len(frames) % num_clips:
        raise ValueError(f"views {views!r} need a positive multiple of {num_clips} frames, got {len(frames)}")
    t = len(frames) // num_clips
    # each distinct frame once (read_frames gives a repeated index the same array object)
    slot: dict[int, int] = {}
    unique: list[np.ndarray] = []
    order = []
    for k, frame in enumerate(frames):
        if id(frame) not in slot:
            arr = np.asarray(frame)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"frame {k}: expected an HxWx3 uint8 RGB image, got {arr.dtype} {arr.shape}")
            if unique and arr.shape != unique[0].shape:
                raise ValueError(f"frame {k} is {arr.shape[1]}x{arr.shape[0]}, frame 0 "
                                 f"{unique[0].shape[1]}x{unique[0].shape[0]}: a video's frames share one size")
            slot[id(frame)] = len(unique)
            unique.append(arr)
        order.append(slot[id(frame)])
    h, w = unique[0].shape[:2]
    new_w, new_h = evl_resized_size(w, h, short)
    offsets = evl_crop_offsets(new_w, new_h, size, num_crops)
    mean_t = torch.tensor([float(x) for x in mean], dtype=torch.float32)
    std_t = torch.tensor([float(x) for x in std], dtype=torch.float32)
    # ``(u8.float() / 255. - mean) / std`` depends only on the byte and the channel: the official
    # float32 ops applied once to the 256 levels give a table with exactly the same values
    lut = ((torch.arange(256, dtype=torch.uint8).float() / 255.)[:, None] - mean_t) / std_t   # [256, 3]
    lut = lut.numpy().T.copy()                                                                 # [3, 256]
    crops = np.empty((num_crops, len(unique), 3, size, size), dtype=np.float32)
    with torch.inference_mode():
        # One frame per call: PyTorch's CPU bilinear kernel rounds a frame's values differently
        # (about 1 ulp) depending on how many frames share the call, so frame by frame makes a
        # frame's values depend on that frame alone (the same in every view, window and clip
        # length), and holds one full-size float frame at a time (1080p: 25 MB).
        for u, arr in enumerate(unique):
            x = np.stack([lut[c][arr[..., c]] for c in range(3)])[:, None]   # [3, 1, H, W] normalised
            x = F.interpolate(torch.from_numpy(x), size=(new_h, new_w), mode="bilinear", align_corners=False)
            for j, (left, top) in enumerate(offsets):
                crops[j, u] = x[:, 0, top:top + size, left:left + size].numpy()
    out = np.empty((num_crops * num_clips, t, 3, size, size), dtype=np.float32)
    for k, u in enumerate(order):
        clip, ti = divmod(k, t)
        for j in range(num_crops):
            out[j * num_clips + clip, ti] = crops[j, u]
    return out
