"""Long videos: score labels in sliding windows along the video, and plot the scores over time.

    tl = classify_windows(model, "match.mp4", ["goal", "corner kick", "crowd"], window=4, stride=2)
    plot_timeline(tl, "match.png")

Windows start every ``stride`` seconds at 0, stride, 2*stride, ...; each lasts ``window`` seconds
except the last, which ends at the video's end (a window longer than the video is the whole
video). Inside a window the model's T frames are sampled with the official TSN rule (X-CLIP) or
stride rule (EVL, one centred clip) among the frames whose timestamps fall in ``[start, end)``,
so one window scores exactly as a video clip cut at those times would. Frame times come from the
packet timestamps (presentation order), so variable frame rates are handled; a stream without
usable timestamps falls back to index / fps.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from ..io.labels import check_labels
from .decoders import choose_decoder
from .reader import TruncatedVideoWarning, VideoError
from .sampling import sample_indices, stride_indices
from .transforms import preprocess

BATCH_WINDOWS = 8   # windows scored per model call; also bounds the decoded frames held in memory


def check_seconds(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return v


def window_bounds(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of every window over a video of ``duration`` seconds."""
    window, stride = check_seconds("window", window), check_seconds("stride", stride)
    if not duration > 0:
        raise ValueError(f"the video's duration must be > 0 seconds, got {duration!r}")
    out = []
    k = 0
    while True:
        start = k * stride   # multiplied, not summed, so that long videos do not drift
        if start >= duration:
            break
        end = min(start + window, duration)
        out.append((start, end))
        if end >= duration:
            break
        k += 1
    return out


def window_indices(times: np.ndarray, start: float, end: float, num_frames: int,
                   frame_stride: int | None = None) -> list[int]:
    """Indices of ``num_frames`` frames among those with ``start <= time < end``: X-CLIP's TSN rule,
    or with ``frame_stride`` EVL's stride rule (one centred clip, padded with the window's last
    frame), as if the window were a video of its own.

    A window with no frame inside (a stride longer than the frame spacing near the end) takes the
    frame shown at ``start``: the last frame that started at or before it."""
    lo = int(np.searchsorted(times, start, side="left"))
    hi = int(np.searchsorted(times, end, side="left"))
    if hi <= lo:
        lo = max(0, int(np.searchsorted(times, start, side="right")) - 1)
        hi = lo + 1
    if frame_stride is not None:
        return [lo + i for i in stride_indices(hi - lo, num_frames, frame_stride)[0]]
    return [lo + i for i in sample_indices(hi - lo, num_frames)]


class _PyAVFrames:
    """One open PyAV video for the whole timeline: the packet index is built once, and every
    batch of windows seeks to the keyframes it needs (engine.video.reader; same package)."""

    def __init__(self, path):
        from .reader import VideoFile  # the private reader: its packet index gives the frame times

        self.video = VideoFile(path)

    def frame_times(self) -> np.ndarray:
        """Presentation time in seconds of every frame, relative to the first one."""
        v = self.video
        if v.exact:
            tb = float(v.stream.time_base)
            pts = np.asarray([v.pts[i] for i in v.order], dtype=np.float64)
            return (pts - pts[0]) * tb
        return np.arange(v.num_frames, dtype=np.float64) / _fps(v.stream)

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        from .reader import FrameMismatch

        try:
            return self.video.read(indices)
        except FrameMismatch:
            return self.video.read_sequential(indices)

    def close(self) -> None:
        self.video.close()


def _fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 30.0  # a stream with no rate at all: the common default, only used to space the frames


def _duration(times: np.ndarray, fps: float) -> float:
    """Video duration: the last frame's start plus one frame period (the median spacing of the
    frames; 1 / fps for a one-frame video)."""
    steps = np.diff(times)
    step = float(np.median(steps)) if len(steps) else 0.0
    return float(times[-1]) + (step if step > 0 else 1.0 / fps)


def classify_windows(model, path, labels, window: float, stride: float, topk: int = 5,
                     decoder: str = "auto", batch_size: int = BATCH_WINDOWS, preprocessing: dict | None = None) -> dict:
    """Score ``labels`` in windows of ``window`` seconds every ``stride`` seconds along ``path``.

    Returns ``{"path", "duration", "window", "stride", "labels", "windows": [{"start", "end",
    "top": [[label, score], ...], "scores": [one softmax score per label]}]}``; times in seconds.
    A truncated file (fewer frames than its container declares) is scored along the frames that
    survived, and the dict gets a ``"warning"`` saying so (``DecodeStats.warning``).
    ``decoder``: "auto" | "dali" | "pyav" (see ``engine.video.decoders``).

    ``preprocessing``: the model's spec dict (default: ``model.preprocessing`` where that is a dict,
    else X-CLIP's rules with ``model.num_frames`` / ``model.image_size``). With an EVL spec each
    window is one EVL view ("1x1": stride sampling inside the window, EVL's resize and centre crop),
    read with PyAV (``auto``; a forced ``dali`` raises ``DecoderUnavailableError``). Scoring calls
    ``model.encode_text(labels)`` and ``model.logits(pixels, text)`` for every family.
    """
    window, stride = check_seconds("window", window), check_seconds("stride", stride)
    if int(topk) < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = os.fspath(path)
    labels = check_labels(labels)
    text = model.encode_text(labels)   # computed once for all windows (and cached by the model)
    k = min(int(topk), len(labels))
    if preprocessing is None and isinstance(getattr(model, "preprocessing", None), dict):
        preprocessing = model.preprocessing
    spec = None
    if preprocessing is not None:
        from .preprocessing import parse_preprocessing

        spec = parse_preprocessing(preprocessing)
    evl = spec is not None and spec.family == "evl"
    if spec is not None:
        t, size = spec.num_frames, spec.crop
    else:
        t, size = int(model.num_frames), int(model.image_size)

    if evl:
        if str(decoder).strip().lower() == "dali":
            from .decoders import DecoderUnavailableError

            raise DecoderUnavailableError("decoder 'dali' does not implement EVL's preprocessing (stride "
                                          "sampling, float resize); use decoder 'auto' or 'pyav'")
        chosen = "pyav"
    else:
        chosen = choose_decoder(path, decoder)
    frames = _PyAVFrames(path)
    try:
        times = frames.frame_times()
        # the windows span the frames the packet scan found; said here for both decoders
        warning = frames.video.stats.warning(path)
        duration = _duration(times, _fps(frames.video.stream))
        bounds = window_bounds(duration, window, stride)
        clips = [window_indices(times, s, e, t, spec.stride if evl else None) for s, e in bounds]
        if chosen == "dali":
            frames.close()   # DALI reads the file itself; PyAV only supplied the frame times
            from .dali import read_index_clips

            def read_batch(batch):
                return read_index_clips(path, batch, size)
        else:
            def read_batch(batch):
                flat = frames.read([i for clip in batch for i in clip])
                if evl:
                    from .evl_transforms import preprocess_evl

                    return np.concatenate([preprocess_evl(flat[j * t:(j + 1) * t], size=size, mean=spec.mean,
                                                          std=spec.std, resize_short_side=spec.resize_short_side)
                                           for j in range(len(batch))])
                return np.concatenate([preprocess(flat[j * t:(j + 1) * t], size=size)
                                       for j in range(len(batch))])

        import torch

        rows = []
        for b in range(0, len(clips), int(batch_size)):
            pixels = read_batch(clips[b:b + int(batch_size)])      # [B, T, 3, S, S]
            with torch.inference_mode():
                probs = model.logits(pixels, text).float().softmax(dim=-1).cpu().numpy()
            rows.extend(probs)
    except VideoError:
        raise
    except Exception as e:
        import av

        if isinstance(e, av.FFmpegError):
            raise VideoError(path, f"decoding failed ({e.__class__.__name__}: {e}); re-encode it, e.g. "
                             "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from None
        raise
    finally:
        frames.close()

    out_windows = []
    for (start, end), p in zip(bounds, rows):
        order = np.argsort(-p, kind="stable")[:k]
        out_windows.append({"start": round(start, 6), "end": round(end, 6),
                            "top": [[labels[i], float(p[i])] for i in order],
                            "scores": [float(x) for x in p]})
    out = {"path": path, "duration": round(duration, 6), "window": window, "stride": stride,
           "labels": labels, "windows": out_windows}
    if warning is not None:
        out["warning"] = warning   # only when set: healthy videos' timelines keep their keys
    return out


def plot_timeline(timeline: dict, png_path: str, max_labels: int = 5) -> None:
    """Draw the scores of the ``max_labels`` best labels over time (window centres) to a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plot_timeline needs matplotlib: `pip install matplotlib` "
                          "(or `pip install -e .[dev]`)") from None
    if not isinstance(timeline, dict) or not all(key in timeline for key in ("labels", "windows")):
        raise ValueError("timeline must be the dict classify_windows returns (with 'labels' and 'windows')")
    windows, labels = timeline["windows"], list(timeline["labels"])
    if not windows:
        raise ValueError("the timeline has no windows to plot")
    matplotlib.use("Agg")   # files only: no display needed (CI, servers)
    import matplotlib.pyplot as plt

    scores = np.asarray([w["scores"] for w in windows], dtype=np.float64)   # [W, K]
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"each window needs {len(labels)} scores (one per label), got shape {scores.shape}")
    centres = np.asarray([(w["start"] + w["end"]) / 2 for w in windows])
    # "top overall": the labels with the highest peak score anywhere, so a short event shows up
    best = np.argsort(-scores.max(axis=0), kind="stable")[:max(1, int(max_labels))]
    fig, ax = plt.subplots(figsize=(10, 4))
    try:
        for i in best:
            ax.plot(centres, scores[:, i], marker="o" if len(windows) < 40 else None, label=labels[i])
        ax.set_xlabel("time (s, window centre)")
        ax.set_ylabel("score (softmax over labels)")
        ax.set_xlim(0, max(timeline.get("duration") or 0, float(centres.max())))
        ax.set_ylim(0, 1)
        name = os.path.basename(str(timeline.get("path", "")))
        ax.set_title(f"{name}: window {timeline.get('window')} s, stride {timeline.get('stride')} s")
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        folder = os.path.dirname(os.path.abspath(png_path))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(png_path, dpi=100)
    finally:
        plt.close(fig)


def timeline_rows(model, paths, known_errors, labels, window: float, stride: float, topk: int = 5,
                  decoder: str = "auto", plot: str | None = None):
    """One timeline dict (with its "error": None) per path, in order; the error instead where a
    video fails, so that one video's failure does not end the run. `known_errors`: errors already
    known (an empty folder). `plot`: also draw each timeline (see ``plot_paths``)."""
    plots = plot_paths(plot, paths) if plot else {}
    for path in paths:
        if path in known_errors:
            yield {"path": path, "error": known_errors[path]}
            continue
        try:
            row = dict(classify_windows(model, path, labels, window=window, stride=stride, topk=topk,
                                        decoder=decoder))
        except VideoError as e:
            yield {"path": path, "error": str(e)}
            continue
        except Exception as e:  # one video's failure must not end the run
            yield {"path": path, "error": f"{path}: could not classify its windows ({type(e).__name__}: {e})"}
            continue
        row.setdefault("path", path)
        row.setdefault("error", None)
        if row.get("warning"):
            warnings.warn(row["warning"], TruncatedVideoWarning, stacklevel=1)   # stderr, once per file
        if path in plots:
            try:
                plot_timeline(row, plots[path])
            except Exception as e:
                row["error"] = f"{path}: could not plot the timeline to {plots[path]} ({type(e).__name__}: {e})"
        yield row


def plot_paths(plot: str, paths) -> dict:
    """FILE.png for one video; FILE.<video name>.png for several (numbered if names repeat)."""
    paths = list(paths)
    if len(paths) == 1:
        return {paths[0]: plot}
    stem, ext = os.path.splitext(plot)
    out, used = {}, set()
    for i, path in enumerate(paths):
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or f"video{i}"
        candidate = f"{stem}.{name}{ext or '.png'}"
        if candidate in used:
            candidate = f"{stem}.{name}-{i}{ext or '.png'}"
        used.add(candidate)
        out[path] = candidate
    return out
