"""Training and evaluation data: list files, labels CSV, the clip dataset and its augmentation.

List files use the official format (microsoft/VideoX X-CLIP/datasets/build.py VideoDataset):
one `relative/path.mp4 label_id` per line, paths relative to a root folder; labels are an
`id,name` CSV. Training clips follow the official train pipeline (build.py `train_pipeline`,
datasets/pipeline.py): TSN sampling with a random offset inside each of the T segments
(`SampleFrames` without test_mode: frame i = i * (n // T) + randint(n // T)); resize of the
short side to int(256 / 224 * S); `MultiScaleCrop` (crop sides drawn from `crop_scales` of the
short side, width and height at most one scale apart, one of five fixed positions); resize to
S x S; horizontal flip; colour jitter (brightness, contrast, saturation, hue) and grayscale.
Crop, flip and jitter are drawn once per clip and shared by its frames (the official jitter draws
per frame; sharing keeps a clip's colours consistent over time, which motion-based classes need).
Every random choice comes from a generator seeded by (seed, epoch, sample index), so a clip's
augmentation does not depend on worker count, process count or where a resumed run restarts.
Evaluation clips are exactly the engine's `read_video` (1x1 or 4x3 views).

EVL (`preprocessing=` an EVL spec, train/evl.py): training clips take the stride's frames from a
random start and train/evl.py's augmentation; evaluation clips are `read_video` with the spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from xclip_engine.engine.io.labels import load_labels
from xclip_engine.engine.video.reader import VideoError, count_frames, normalize, read_frames, read_video, resize_target
from xclip_engine.engine.video.sampling import tsn_train_indices
from xclip_engine.engine.video.transforms import resize_short_side

from .config import DataSection


class DataError(ValueError):
    """A list file, labels file or video that stops the run; the message names file and line."""


@dataclass(frozen=True)
class Sample:
    path: str      # absolute (root joined)
    label: int
    line: int      # 1-based line in the list file
    source: str    # the list file

    def where(self) -> str:
        return f"{self.path} ({self.source} line {self.line})"


# ---- files ---------------------------------------------------------------------------------------
def read_labels(path: str) -> list[str]:
    try:
        return load_labels(path)
    except ValueError as e:
        raise DataError(f"labels file: {e}") from None


def read_list(list_path: str, num_classes: int, root: str | None = None, strict: bool = False,
              report=None) -> list[Sample]:
    """Parse an official list file. A malformed line or a label id outside 0..num_classes-1 stops
    with the line named; a missing video is reported (`report(msg)`) and skipped, or stops when
    `strict`."""
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: no such list file")
    root = os.path.dirname(os.path.abspath(list_path)) if root is None else root
    samples, missing = [], []
    with open(list_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)   # a path may hold spaces; the label is the last field
            if len(parts) != 2:
                raise DataError(f"{list_path} line {n}: expected 'relative/path.mp4 label_id', got {line!r}")
            rel, label = parts
            try:
                label_id = int(label)
            except ValueError:
                raise DataError(f"{list_path} line {n}: label id {label!r} is not an integer") from None
            if not 0 <= label_id < num_classes:
                raise DataError(f"{list_path} line {n}: label id {label_id} is outside the label set "
                                f"(ids 0..{num_classes - 1}); fix the line or use the matching labels file")
            sample = Sample(os.path.join(root, rel), label_id, n, list_path)
            if not os.path.isfile(sample.path):
                if strict:
                    raise DataError(f"{sample.where()}: video not found (--strict stops here; without it "
                                    "missing videos are skipped)")
                missing.append(sample)
                continue
            samples.append(sample)
    for s in missing:
        if report is not None:
            report(f"skipped {s.where()}: video not found")
    if not samples:
        raise DataError(f"{list_path}: no usable videos ({len(missing)} missing); check data.root "
                        f"({root}) and the paths in the list")
    return samples


# ---- training augmentation ---------------------------------------------------------------------
def multi_scale_crop_box(width: int, height: int, size: int, scales, rng) -> tuple[int, int, int, int]:
    """(x, y, w, h) as pipeline.py MultiScaleCrop draws it with random_crop=False, max_wh_scale_gap=1."""
    base = min(width, height)
    sides = [int(base * s) for s in scales]
    candidates = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    w, h = candidates[rng.integers(len(candidates))]
    w, h = (size if abs(w - size) < 3 else w), (size if abs(h - size) < 3 else h)
    w, h = min(max(w, 1), width), min(max(h, 1), height)
    ws, hs = (width - w) // 4, (height - h) // 4
    offsets = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    x, y = offsets[rng.integers(len(offsets))]
    return x, y, w, h


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R 601-2, as PIL's convert("L")


def color_jitter(clip: np.ndarray, aug: DataSection, rng) -> np.ndarray:
    """clip [T, H, W, 3] uint8 -> jittered uint8; one draw of the four factors for the whole clip.
    Brightness, contrast and saturation blend with black, the frame's mean gray and the pixel's
    gray by a factor in [1 - x, 1 + x] (torchvision's ColorJitter definitions); hue rotates by up
    to `hue` of the circle."""
    x = clip.astype(np.float32)
    b, c, s = (rng.uniform(max(0.0, 1 - v), 1 + v) for v in (aug.brightness, aug.contrast, aug.saturation))
    h = rng.uniform(-aug.hue, aug.hue)
    x = np.clip(x * b, 0, 255)
    mean = (x @ _LUMA).mean(axis=(1, 2), keepdims=True)[..., None]         # [T, 1, 1, 1]
    x = np.clip(x * c + mean * (1 - c), 0, 255)
    gray = (x @ _LUMA)[..., None]
    x = np.clip(x * s + gray * (1 - s), 0, 255)
    out = np.rint(x).astype(np.uint8)
    if h != 0.0:
        hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in out])    # H in 0..179
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(h * 180))) % 180).astype(np.uint8)
        out = np.stack([cv2.cvtColor(f, cv2.COLOR_HSV2RGB) for f in hsv])
    return out


def augment_clip(frames: list[np.ndarray], size: int, aug: DataSection, rng) -> np.ndarray:
    """Frames of one clip, already resized by the family's rule -> uint8 [T, S, S, 3]: a multi-scale
    crop resized to S, flip, colour jitter, grayscale, each drawn once per clip (X-CLIP's and
    EVL's training clips; they differ in the resize before and the normalisation after)."""
    height, width = frames[0].shape[:2]
    x, y, w, h = multi_scale_crop_box(width, height, size, aug.crop_scales, rng)
    clip = np.stack([f[y:y + h, x:x + w] if (w, h) == (size, size) else   # a resize to its own size is a copy
                     cv2.resize(np.ascontiguousarray(f[y:y + h, x:x + w]), (size, size),
                                interpolation=cv2.INTER_LINEAR) for f in frames])   # [T, S, S, 3]
    if rng.random() < aug.flip:
        clip = clip[:, :, ::-1]
    if rng.random() < aug.color_jitter:
        clip = color_jitter(clip, aug, rng)
    if rng.random() < aug.grayscale:
        gray = np.rint(clip.astype(np.float32) @ _LUMA).astype(np.uint8)
        clip = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(clip)


def train_transform(frames: list[np.ndarray], size: int, aug: DataSection, rng) -> np.ndarray:
    """Decoded RGB frames of one clip -> [T, 3, S, S] float32, the official train pipeline."""
    frames = [resize_short_side(np.asarray(f), resize_target(size)) for f in frames]
    clip = augment_clip(frames, size, aug, rng)
    return np.ascontiguousarray(normalize(clip).transpose(0, 3, 1, 2))


# ---- dataset -----------------------------------------------------------------------------------
class ClipDataset(Dataset):
    """Samples -> {"pixels", "label", "index", "error"}; a video that fails to decode comes back
    with pixels None and the error, so the caller reports it and the epoch goes on.

    Training mode takes (epoch, index) keys (from EpochSampler) and returns [T, 3, S, S];
    test mode takes an index and returns [V, T, 3, S, S] for `views`."""

    def __init__(self, samples: list[Sample], num_frames: int, size: int, train: bool,
                 aug: DataSection | None = None, seed: int = 0, views: str = "1x1", preprocessing: dict | None = None):
        self.samples, self.num_frames, self.size = samples, num_frames, size
        self.train, self.aug, self.seed, self.views = train, aug or DataSection(), seed, views
        self.preprocessing = preprocessing   # an EVL spec (train/evl.py evl_spec), None: X-CLIP
        self.frames: list | None = None   # per sample: every decoded frame, or the error (see cache_frames)

    def cache_frames(self, threads: int = 2, progress=None) -> int:
        """Decode every training clip once and keep all its frames in memory (uint8 RGB).

        A small data set then costs no decoding after the first pass: the shapes clips decode in
        a few ms each but an epoch decodes thousands of them, every epoch, in the workers that
        share the cores with the model. Augmentation still draws from the same frames, so a
        cached run picks exactly the frames and crops an uncached one would. DataLoader workers
        are forked after this and share the arrays copy-on-write. Returns the bytes held."""
        if not self.train:
            raise ValueError("cache_frames is for training datasets (evaluation decodes each clip once anyway)")

        def load(sample):
            try:
                return read_frames(sample.path, range(count_frames(sample.path)))
            except VideoError as e:
                return e.message or str(e)
            except Exception as e:  # a decoder failure is reported per clip, as without the cache
                return f"could not read the video ({type(e).__name__}: {e})"

        from concurrent.futures import ThreadPoolExecutor  # PyAV releases the GIL while decoding

        frames = []
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for i, item in enumerate(pool.map(load, self.samples)):
                frames.append(item)
                if progress is not None:
                    progress(i + 1, len(self.samples))
        self.frames = frames
        return sum(f.nbytes for item in frames if isinstance(item, list) for f in item)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key if self.train else (0, key)
        s = self.samples[index]
        out = {"pixels": None, "label": s.label, "index": index, "error": None}
        try:
            if self.train:
                rng = np.random.default_rng([self.seed, epoch, index])
                cached = None if self.frames is None else self.frames[index]
                if isinstance(cached, str):
                    raise VideoError(s.path, cached)
                n = count_frames(s.path) if cached is None else len(cached)
                if self.preprocessing is not None:
                    from .evl import evl_train_transform, train_start

                    idx = train_start(n, self.num_frames, self.preprocessing["stride"], rng)
                else:
                    idx = tsn_train_indices(n, self.num_frames, rng)
                frames = read_frames(s.path, idx) if cached is None else [cached[i] for i in idx]
                transform = train_transform if self.preprocessing is None else evl_train_transform
                out["pixels"] = torch.from_numpy(transform(frames, self.size, self.aug, rng))
            elif self.preprocessing is not None:
                out["pixels"] = torch.from_numpy(read_video(s.path, views=self.views, preprocessing=self.preprocessing))
            else:
                out["pixels"] = torch.from_numpy(read_video(s.path, self.num_frames, self.size, self.views))
        except VideoError as e:
            out["error"] = e.message or str(e)
        except Exception as e:  # a decoder or transform failure must not end the epoch
            out["error"] = f"could not read the video ({type(e).__name__}: {e})"
        return out


def collate(items: list[dict]) -> dict:
    ok = [it for it in items if it["pixels"] is not None]
    return {
        "pixels": torch.stack([it["pixels"] for it in ok]) if ok else None,
        "labels": torch.tensor([it["label"] for it in ok], dtype=torch.long),
        "indices": [it["index"] for it in ok],
        "failed": [(it["index"], it["error"]) for it in items if it["pixels"] is None],
    }


class EpochSampler(Sampler):
    """This process's share of one epoch, in whole accumulation windows, as (epoch, index) keys.

    torch's DistributedSampler does the shuffling (seed + epoch) and the split across processes;
    this wrapper drops the tail that does not fill a window of `batch_size x accumulation_steps`
    and can start `skip_updates` windows in, which is how a resumed run continues mid-epoch
    without decoding the clips it already used."""

    def __init__(self, num_samples: int, batch_size: int, accumulation_steps: int, rank: int, world: int,
                 seed: int):
        self.inner = DistributedSampler(range(num_samples), num_replicas=world, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.window = batch_size * accumulation_steps
        self.updates_per_epoch = self.inner.num_samples // self.window
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_updates: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_updates
        self.inner.set_epoch(epoch)

    def __iter__(self):
        idx = list(self.inner)[self.skip * self.window:self.updates_per_epoch * self.window]
        return iter([(self.epoch, i) for i in idx])

    def __len__(self) -> int:
        return max(0, self.updates_per_epoch - self.skip) * self.window


def few_shot_subset(samples: list[Sample], k: int, seed: int = 0) -> list[Sample]:
    """K samples of every class (all of a class that has fewer), drawn reproducibly from `seed`."""
    if k < 1:
        raise DataError(f"few-shot K must be >= 1, got {k}")
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted(by_class):
        group = by_class[label]
        pick = sorted(rng.choice(len(group), size=min(k, len(group)), replace=False).tolist())
        out += [group[i] for i in pick]
    return out


def write_list(samples: list[Sample], path: str, root: str) -> str:
    """Write samples back in the official format, paths relative to `root`."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(f"{os.path.relpath(s.path, root)} {s.label}\n")
    return path


__all__ = ["ClipDataset", "DataError", "EpochSampler", "Sample", "collate", "few_shot_subset", "read_labels",
           "read_list", "train_transform", "tsn_train_indices", "write_list"]
