"""Which frames of a video X-CLIP looks at: the official test-time temporal sampling rules.

Source: microsoft/VideoX X-CLIP (commit 1744b21), datasets/build.py and datasets/pipeline.py.

* Single clip (TEST.NUM_CLIP == 1): build.py:287 samples with
  ``SampleFrames(clip_len=1, frame_interval=1, num_clips=NUM_FRAMES, test_mode=True)``. With
  clip_len 1 every "clip" is one frame, so ``_get_test_clips`` (pipeline.py:1945-1968) is plain
  TSN: ``avg = n / T`` and frame i is ``int(i * avg + avg / 2)``. Because the offsets stay below
  ``T * avg == n`` the modulo of pipeline.py:2033-2034 never fires, and a video shorter than T
  frames simply repeats frames (8 of 5 -> 0 0 1 2 2 3 4 4). VideoDataset uses start_index 0
  (build.py:177), so indices are 0-based.
* Several clips (TEST.NUM_CLIP > 1): build.py:299-300 swaps in
  ``SampleFrames(..., multiview=NUM_CLIP)`` *without* test_mode, so each clip is drawn by the
  training rule ``_get_train_clips`` (pipeline.py:1912-1943, concatenated clip after clip at
  pipeline.py:1982-1985): ``avg = n // T``; if avg > 0 frame i is ``i * avg + randint(avg)``;
  if the video is shorter than T, ``around(i * n / T)`` (round half to even), then wrapped with
  ``mod n`` (pipeline.py:2033-2034). The official 4-clip views are therefore random; we draw the
  same distribution from a seeded ``numpy.random.RandomState`` (same legacy generator and call
  sequence as the official global ``np.random``) so that results are reproducible.
"""

from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int) -> None:
    if int(num_video_frames) < 1:
        raise ValueError(f"a video needs at least 1 frame to sample from, got {num_video_frames}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def sample_indices(num_video_frames: int, num_frames: int) -> list[int]:
    """Official test-time TSN sampling: ``num_frames`` 0-based frame indices of a video of
    ``num_video_frames`` frames (pipeline.py:1960-1963). Frames repeat when the video is shorter."""
    _check(num_video_frames, num_frames)
    avg = num_video_frames / float(num_frames)
    # Same float64 operations in the same order as the official numpy expression
    # (arange * avg + avg / 2, then truncation by astype(int)), so the indices match bit for bit.
    return [int(i * avg + avg / 2.0) for i in range(num_frames)]


def tsn_train_indices(num_video_frames: int, num_frames: int, rng) -> list[int]:
    """One clip by the official training rule (pipeline.py:1926-1943 plus the loop at 2033-2034):
    a random frame in each of the T segments of n // T frames; a video shorter than T repeats frames.

    `rng` is a numpy Generator (the trainer) or RandomState (seeded multi-view test clips, which
    must draw exactly as the official code does).
    """
    avg = num_video_frames // num_frames
    if avg > 0:
        draw = rng.integers if isinstance(rng, np.random.Generator) else rng.randint
        offsets = np.arange(num_frames) * avg + draw(avg, size=num_frames)
    else:
        # avg == 0 means n < T. The official branch `n > max(T, 1)` in between can then never be
        # taken, so the evenly spread, rounded positions are what a short video gets.
        offsets = np.around(np.arange(num_frames) * (num_video_frames / num_frames))
    return [int(i) % num_video_frames for i in offsets]


def sample_clip_indices(num_video_frames: int, num_frames: int, num_clips: int,
                        seed: int | None = 0) -> list[list[int]]:
    """Frame indices for ``num_clips`` temporal views, one list of ``num_frames`` per clip.

    One clip: the deterministic test rule, ``[sample_indices(n, T)]``. Several clips: the official
    multi-view rule (random TSN offsets per clip, see the module docstring) drawn from
    ``RandomState(seed)``; ``seed=None`` draws fresh randomness like the official code.
    """
    _check(num_video_frames, num_frames)
    if int(num_clips) < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1:
        return [sample_indices(num_video_frames, num_frames)]
    rng = np.random.RandomState(seed)
    return [tsn_train_indices(num_video_frames, num_frames, rng) for _ in range(num_clips)]


# -- EVL -----------------------------------------------------------------------------------------
# Source: OpenGVLab/efficient-video-recognition, video_dataset/dataset.py, VideoDataset in test
# mode (``_generate_temporal_crops``): frames at a fixed index stride s, a video shorter than the
# clip's span padded with copies of its last frame, one clip centred, several spread evenly with
# Python's round (docs/preprocessing.md §7).


def stride_indices(num_video_frames: int, num_frames: int, stride: int, num_clips: int = 1) -> list[list[int]]:
    """EVL's test-time frame indices: ``num_clips`` lists of ``num_frames`` 0-based indices.

    With ``span = (T - 1) * s + 1`` and ``n' = max(n, span)`` (the padded length),
    ``slide = n' - span``; clip j starts at ``slide // 2`` for one clip and at
    ``round(slide / (num_clips - 1) * j)`` (Python's round: half to even) for several, and takes
    ``start, start + s, ..., start + (T - 1) * s``. Indices at or past ``n`` are the padding, i.e.
    the last frame ``n - 1``.
    """
    for name, value in (("num_video_frames", num_video_frames), ("num_frames", num_frames),
                        ("stride", stride), ("num_clips", num_clips)):
        try:
            ok = not isinstance(value, bool) and int(value) == value and int(value) >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    n, t, s, v = int(num_video_frames), int(num_frames), int(stride), int(num_clips)
    span = (t - 1) * s + 1
    slide = max(n, span) - span
    if v == 1:
        starts = [slide // 2]
    else:
        # the same float expression as the official code, so the rounding matches bit for bit
        starts = [round(slide / (v - 1) * j) for j in range(v)]
    return [[min(st + i * s, n - 1) for i in range(t)] for st in starts]
