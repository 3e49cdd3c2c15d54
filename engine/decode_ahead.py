"""Video files -> Predictions: decoding threads run ahead of the model, in a bounded queue.

    for p in classify_stream(model, paths, labels, topk=5, batch_size=8, workers=2): ...

`Model.classify` / `Model.classify_iter` and `xe.infer` (engine/pipeline.py) all score videos
through this one loop. `workers` threads (PyAV and DALI release the GIL) decode at most `prefetch`
videos beyond the batch being scored, so the next batch decodes while the model runs this one and
memory stays flat however many paths there are; `paths` may be any iterable, read lazily.
`workers` is capped (`decode_threads`: 4 per core, 32 at most), since the read-ahead grows with it.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .io.labels import check_labels
from .io.results import Prediction
from .video.reader import DecodeStats, TruncatedVideoWarning, VideoError, collect_stats, parse_views
from .video.transforms import average_views

DECODERS = ("auto", "dali", "pyav")   # engine.video.decoders.read_clip: DALI on a GPU where it can, else PyAV
MAX_DECODE_THREADS = 32


def decode_threads(workers: int) -> int:
    """The decode threads started for `workers`: at most 4 per core and MAX_DECODE_THREADS. Each
    thread holds a decoded video ahead of the model, so `--workers 1000` would hold 1000 videos
    (1.2 GB of clips for a 0.5 GB run) for no speed: decoding is CPU-bound, 4 threads per core
    already cover the time a thread waits on the disk."""
    return max(1, min(workers, 4 * (os.cpu_count() or 1), MAX_DECODE_THREADS))


def check_decode_args(topk: int = 5, views: str = "1x1", batch_size: int = 8, workers: int = 2,
                      decoder: str = "auto") -> None:
    """Raise for arguments that are the caller's error, before any video is read, so that they are
    reported once instead of as every video's failure."""
    if batch_size < 1 or topk < 1:
        raise ValueError(f"batch_size ({batch_size}) and topk ({topk}) must be at least 1")
    if workers < 1:
        raise ValueError(f"workers ({workers}) must be at least 1")
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    parse_views(views)
    from .video.decoders import DALI_INSTALL, DecoderUnavailableError, dali_installed

    if decoder == "dali" and not dali_installed():
        # the environment's problem, not each video's: say it once instead of failing every input
        raise DecoderUnavailableError(f"decoder 'dali' needs NVIDIA DALI, which is not installed: "
                                      f"`{DALI_INSTALL}` (or use decoder 'pyav' / 'auto')")


def model_labels(model, labels) -> list[str]:
    """The labels to score: the caller's, else the model's own set (a fine-tuned model's). A
    closed-set model (EVL) scores its own classes: labels only name them, one per class."""
    if getattr(model, "closed_set", False):
        from .io.labels import ClosedSetError, check_class_names

        if labels is None and not model.labels:
            raise ClosedSetError(f"this model has {model.num_classes} classes and no class names: pass a labels file "
                                 f"of {model.num_classes} names in the order of its outputs (--labels-file FILE)")
        return check_class_names(model.labels if labels is None else labels, model.num_classes)
    if labels is None:
        if not model.labels:
            raise ValueError("no labels given and the model has no label set of its own: pass labels")
        labels = model.labels
    return check_labels(labels)


def model_views(model, views: str | None) -> str:
    """The views to read: the caller's, else the model's default (its preprocessing's: EVL "3x1")."""
    return (getattr(model, "default_views", None) or "1x1") if views is None else views


def model_read_args(model) -> dict:
    """What read_clip needs beyond path, views and decoder: the model's preprocessing where it is
    not X-CLIP's built-in rule (X-CLIP keeps the plain num_frames/size call, which DALI also serves)."""
    args = dict(num_frames=model.num_frames, size=model.image_size)
    if getattr(model, "family", "xclip") != "xclip":
        args["preprocessing"] = model.preprocessing
    return args


def classify_stream(model, paths, labels=None, topk: int = 5, views: str | None = None, batch_size: int = 8,
                    workers: int = 2, decoder: str = "auto", prefetch: int | None = None,
                    timings: dict | None = None):
    """Yield one Prediction per path, in input order; a video that fails to decode yields its
    error and the others still get answers. Bad arguments raise here, before the generator starts.

    `workers` is capped by `decode_threads`. `prefetch` (default batch_size + the decode threads:
    the whole next batch) bounds the decoded videos
    waiting beyond the batch being scored. `timings`, a dict, gets decode_s (summed over workers),
    wait_s (the model waiting for decoded videos), model_s and videos added to it."""
    labels = model_labels(model, labels)
    views = model_views(model, views)
    check_decode_args(topk, views, batch_size, workers, decoder)
    workers = decode_threads(workers)   # the read-ahead below grows with it: bounded whatever was asked
    text = None if getattr(model, "closed_set", False) else model.encode_text(labels)   # EVL: no text
    clock = timings if timings is not None else {}
    for key in ("decode_s", "wait_s", "model_s"):
        clock.setdefault(key, 0.0)
    clock.setdefault("videos", 0)
    # DALI decodes on the model's device (a CPU model: DALI's CPU decoder, or PyAV)
    read_args = dict(**model_read_args(model), views=views, decoder=decoder, device=str(model.device))
    limit = max(1, batch_size + workers if prefetch is None else prefetch)
    score = _Scorer(model, text, labels, min(topk, len(labels)), clock)
    return _run(paths, read_args, score, batch_size, workers, limit, clock)


def decode_video(path, read_args, read_clip=None, fatal=None):
    """(clip, error, warning) of one video; warning: the answer will come from fewer frames than
    the container declares (a truncated file). A video that cannot be read is its error, never an
    exception, except DecoderUnavailableError (the decoder cannot run here at all). The one
    per-video decode of the engine: the decode threads below and the Ray decode stage
    (engine/cluster/stages.py) both call it."""
    if read_clip is None:
        from .video import decoders

        read_clip, fatal = decoders.read_clip, decoders.DecoderUnavailableError
    stats = DecodeStats()
    try:
        # collected per thread rather than passed as stats=: read_clip stand-ins take no stats
        with collect_stats(stats):
            clip = read_clip(path, **read_args)
        return clip, None, stats.warning(path)
    except VideoError as e:
        return None, str(e), None
    except fatal:
        raise   # the decoder cannot run here at all: stop (future.result() re-raises it)
    except Exception as e:  # an unexpected decoder failure must not end the run
        return None, f"{path}: could not read the video ({type(e).__name__}: {e})", None


def _run(paths, read_args, score, batch_size, workers, limit, clock):
    # looked up per call, not imported once: tests replace engine.video.decoders.read_clip by a fake
    from .video import decoders

    read_clip, fatal = decoders.read_clip, decoders.DecoderUnavailableError
    lock = threading.Lock()   # the workers add up their decode times in one dict

    def decode(path):
        t0 = time.perf_counter()
        try:
            return decode_video(path, read_args, read_clip, fatal)
        finally:
            with lock:
                clock["decode_s"] += time.perf_counter() - t0

    source = (os.fspath(p) for p in paths)
    pending: deque = deque()    # (path, future) in input order: the bounded queue
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xclip-decode")

    def refill():
        while len(pending) < limit:
            path = next(source, None)
            if path is None:
                return
            pending.append((path, pool.submit(decode, path)))

    try:
        refill()
        batch: list = []
        while pending:
            path, future = pending.popleft()
            t0 = time.perf_counter()
            clip, err, warn = future.result()
            clock["wait_s"] += time.perf_counter() - t0
            refill()            # keep the workers busy while this batch is scored
            batch.append((path, clip, err, warn))
            if sum(clip is not None for _, clip, _, _ in batch) >= batch_size:
                yield from score(batch)
                batch = []
        yield from score(batch)
    finally:
        # A consumer that stops early (an error, Ctrl-C) must not wait for the queued decodes.
        pool.shutdown(wait=True, cancel_futures=True)


class _Scorer:
    """One model call per batch of decoded clips (all views of all videos together)."""

    def __init__(self, model, text, labels, k, clock):
        self.model, self.text, self.labels, self.k, self.clock = model, text, labels, k, clock

    def __call__(self, batch):
        clips = [clip for _, clip, _, _ in batch if clip is not None]
        probs = iter(())
        if clips:
            import torch  # here, not at the top: Ray's decode tasks import this module without the model

            t0 = time.perf_counter()
            with torch.inference_mode():
                p = self.model.logits(np.concatenate(clips), self.text).float().softmax(dim=-1)  # [sum V, K]
                # multi-view: the mean of each video's view scores (official 4x3 test)
                probs = iter(average_views(p, [len(c) for c in clips]).cpu())
            self.clock["model_s"] += time.perf_counter() - t0
            self.clock["videos"] += len(clips)
        for path, clip, err, warn in batch:
            if clip is None:
                yield Prediction(path, error=err)
                continue
            score, idx = next(probs).topk(self.k)
            if warn is not None:
                # stderr too, from the consuming thread as each row is given out: the row may go to
                # a file nobody reads line by line. The default filter shows each message (each
                # file) once.
                warnings.warn(warn, TruncatedVideoWarning, stacklevel=1)
            yield Prediction(path, [(self.labels[i], float(s)) for s, i in zip(score.tolist(), idx.tolist())],
                             warning=warn)
