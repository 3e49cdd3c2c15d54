"""Video files -> Predictions: decoding threads run ahead of the model, in a bounded queue.

    for p in classify_stream(model, paths, labels, topk=5, batch_size=8, workers=2): ...

`Model.classify` / `Model.classify_iter` and `xe.infer` (engine/pipeline.py) all score videos
through this one loop. `workers` threads (PyAV and DALI release the GIL) decode at most `prefetch`
videos beyond the batch being scored, so the next batch decodes while the model runs this one and
memory stays flat however many paths there are; `paths` may be any iterable, read lazily.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .io.labels import check_labels
from .io.results import Prediction
from .video.reader import VideoError, parse_views
from .video.transforms import average_views

DECODERS = ("auto", "dali", "pyav")   # engine.video.decoders.read_clip: DALI on a GPU where it can, else PyAV


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
    """The labels to score: the caller's, else the model's own set (a fine-tuned model's)."""
    if labels is None:
        if not model.labels:
            raise ValueError("no labels given and the model has no label set of its own: pass labels")
        labels = model.labels
    return check_labels(labels)


def classify_stream(model, paths, labels=None, topk: int = 5, views: str = "1x1", batch_size: int = 8,
                    workers: int = 2, decoder: str = "auto", prefetch: int | None = None,
                    timings: dict | None = None):
    """Yield one Prediction per path, in input order; a video that fails to decode yields its
    error and the others still get answers. Bad arguments raise here, before the generator starts.

    `prefetch` (default batch_size + workers: the whole next batch) bounds the decoded videos
    waiting beyond the batch being scored. `timings`, a dict, gets decode_s (summed over workers),
    wait_s (the model waiting for decoded videos), model_s and videos added to it."""
    labels = model_labels(model, labels)
    check_decode_args(topk, views, batch_size, workers, decoder)
    text = model.encode_text(labels)
    clock = timings if timings is not None else {}
    for key in ("decode_s", "wait_s", "model_s"):
        clock.setdefault(key, 0.0)
    clock.setdefault("videos", 0)
    # DALI decodes on the model's device (a CPU model: DALI's CPU decoder, or PyAV)
    read_args = dict(num_frames=model.num_frames, size=model.image_size, views=views, decoder=decoder,
                     device=str(model.device))
    limit = max(1, batch_size + workers if prefetch is None else prefetch)
    score = _Scorer(model, text, labels, min(topk, len(labels)), clock)
    return _run(paths, read_args, score, batch_size, workers, limit, clock)


def _run(paths, read_args, score, batch_size, workers, limit, clock):
    # looked up per call, not imported once: tests replace engine.video.decoders.read_clip by a fake
    from .video import decoders

    read_clip, fatal = decoders.read_clip, decoders.DecoderUnavailableError
    lock = threading.Lock()   # the workers add up their decode times in one dict

    def decode(path):
        t0 = time.perf_counter()
        try:
            return read_clip(path, **read_args), None
        except VideoError as e:
            return None, str(e)
        except fatal:
            raise   # the decoder cannot run here at all: stop (future.result() re-raises it)
        except Exception as e:  # an unexpected decoder failure must not end the run
            return None, f"{path}: could not read the video ({type(e).__name__}: {e})"
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
            clip, err = future.result()
            clock["wait_s"] += time.perf_counter() - t0
            refill()            # keep the workers busy while this batch is scored
            batch.append((path, clip, err))
            if sum(clip is not None for _, clip, _ in batch) >= batch_size:
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
        clips = [clip for _, clip, _ in batch if clip is not None]
        probs = iter(())
        if clips:
            t0 = time.perf_counter()
            with torch.inference_mode():
                p = self.model.logits(np.concatenate(clips), self.text).float().softmax(dim=-1)  # [sum V, K]
                # multi-view: the mean of each video's view scores (official 4x3 test)
                probs = iter(average_views(p, [len(c) for c in clips]).cpu())
            self.clock["model_s"] += time.perf_counter() - t0
            self.clock["videos"] += len(clips)
        for path, clip, err in batch:
            if clip is None:
                yield Prediction(path, error=err)
                continue
            score, idx = next(probs).topk(self.k)
            yield Prediction(path, [(self.labels[i], float(s)) for s, i in zip(score.tolist(), idx.tolist())])
