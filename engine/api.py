"""The public API: `load()` a model from any source, then encode, score and classify videos.

    m = xe.load("path/to/xclip-base-patch32")          # transformers folder, .pth, ours, a name
    t = m.encode_text(["eating spaghetti", "surfing"])  # [K, E], cached per label set
    logits = m.logits(pixel_values, t)                  # [B, K]
    preds = m.classify(["a.mp4", "b.mp4"], ["eating spaghetti", "surfing"])
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import load_model
from .labels import check_labels
from .model import XCLIP
from .tokenizer import ClipTokenizer
from .video import VideoError, parse_views

BACKENDS = ("reference", "triton", "onnxruntime", "tensorrt")
DECODERS = ("auto", "dali", "pyav")   # engine.decoders.read_clip: DALI on a GPU where it can, else PyAV


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)   # (label, softmax score), best first
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top],
                "error": self.error}


def _default_device(device):
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Model:
    """A loaded X-CLIP model with its tokenizer: the object `xe.load` returns."""

    choice = None         # backend "auto": the measured Choice (engine/runtime/choice.py)
    backend_note = ""     # which path runs, and why

    def __init__(self, net: XCLIP, tokenizer: ClipTokenizer, device=None, labels=None, origin: str = "",
                 kind: str = "", backend: str = "reference"):
        self.device = _default_device(device)
        # `net` is the reference XCLIP (any ops backend) or a runtime with the same four calls
        # (encode_text, encode_video, video_features, __call__) and .config: ONNX Runtime, TensorRT.
        self.net = net.to(self.device).eval() if isinstance(net, torch.nn.Module) else net
        if self.device.type == "cpu" and isinstance(net, torch.nn.Module):
            from .cpu_memory import keep_freed_memory

            keep_freed_memory()   # ~10% of an fp32 batch-8 forward was page faults (engine/cpu_memory.py)
        self.tokenizer = tokenizer
        self.labels = list(labels) if labels else None    # the label set a fine-tuned model came with
        self.origin, self.kind, self.backend = origin, kind, backend
        self._text_cache: OrderedDict = OrderedDict()

    @property
    def config(self):
        return self.net.config

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def __repr__(self):
        return (f"Model({self.origin or 'random'}, backend={self.backend}, frames={self.num_frames}, "
                f"size={self.image_size}, device={self.device})")

    # ---- features -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_text(self, labels) -> torch.Tensor:
        """Label strings (or token ids [K, 77]) -> text features [K, E]; cached per label set."""
        if torch.is_tensor(labels):
            return self.net.encode_text(labels.to(self.device))
        labels = tuple(check_labels(labels))
        if labels not in self._text_cache:
            ids = self.tokenizer(list(labels), context_length=self.config.context_length)
            self._text_cache[labels] = self.net.encode_text(ids.to(self.device))
            while len(self._text_cache) > 8:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(labels)
        return self._text_cache[labels]

    def _pixels(self, pixel_values) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(pixel_values)) if not torch.is_tensor(pixel_values) else pixel_values
        c = self.config
        want = (c.num_frames, 3, c.image_size, c.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"pixel_values has shape {tuple(x.shape)}; this model takes [B, {want[0]}, 3, "
                             f"{want[2]}, {want[3]}] (xe.read_video(path, num_frames={want[0]}, size={want[2]}))")
        return x.to(self.device, torch.float32)

    @torch.inference_mode()
    def encode_video(self, pixel_values) -> torch.Tensor:
        """pixel_values [B, T, 3, S, S] -> video embeddings [B, E] (as get_video_features)."""
        return self.net.encode_video(self._pixels(pixel_values))

    @torch.inference_mode()
    def logits(self, pixel_values, text) -> torch.Tensor:
        """pixel_values [B, T, 3, S, S] and text features [K, E] (or labels) -> logits [B, K]."""
        if not torch.is_tensor(text):
            text = self.encode_text(text)
        return self.net(self._pixels(pixel_values), text.to(self.device))

    # ---- files -> answers -----------------------------------------------------------------
    def classify(self, paths, labels=None, topk: int = 5, views: str = "1x1", batch_size: int = 8,
                 workers: int = 2, decoder: str = "auto"):
        """Classify video files; one Prediction per path, in order, errors included."""
        return list(self.classify_iter(paths, labels, topk, views, batch_size, workers=workers, decoder=decoder))

    def classify_iter(self, paths, labels=None, topk: int = 5, views: str = "1x1", batch_size: int = 8,
                      workers: int = 2, decoder: str = "auto", prefetch: int | None = None,
                      timings: dict | None = None):
        """Yield Predictions in input order; a video that fails to decode yields its error, and
        the others still get answers.

        Decoding is pipelined: `workers` threads (PyAV and DALI release the GIL) decode ahead of
        the model, at most `prefetch` videos beyond the batch being scored (default
        batch_size + workers: the whole next batch decodes while this one runs through the
        model). Memory therefore stays flat however many paths there are; `paths` may be any
        iterable, read lazily. `decoder` (auto | dali | pyav) goes to engine.decoders.read_clip.
        `timings`, a dict, gets decode_s (summed over workers), wait_s (the model waiting for
        decoded videos), model_s and videos added to it: where the time went.
        """
        if labels is None:
            if not self.labels:
                raise ValueError("no labels given and the model has no label set of its own: pass labels")
            labels = self.labels
        labels = check_labels(labels)
        if batch_size < 1 or topk < 1:
            raise ValueError(f"batch_size ({batch_size}) and topk ({topk}) must be at least 1")
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be at least 1")
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
        parse_views(views)  # a bad views string is the caller's error, not every video's
        from .decoders import DALI_INSTALL, DecoderUnavailableError, dali_installed, read_clip

        if decoder == "dali" and not dali_installed():
            # the environment's problem, not each video's: say it once instead of failing every input
            raise DecoderUnavailableError(f"decoder 'dali' needs NVIDIA DALI, which is not installed: "
                                          f"`{DALI_INSTALL}` (or use decoder 'pyav' / 'auto')")

        limit = max(1, batch_size + workers if prefetch is None else prefetch)
        text = self.encode_text(labels)
        k = min(topk, len(labels))
        c = self.config
        clock = timings if timings is not None else {}
        for key in ("decode_s", "wait_s", "model_s"):
            clock.setdefault(key, 0.0)
        clock.setdefault("videos", 0)
        # DALI decodes on the model's device (a CPU model: DALI's CPU decoder, or PyAV)
        read_args = dict(num_frames=c.num_frames, size=c.image_size, views=views, decoder=decoder,
                         device=str(self.device))
        return self._pipeline(paths, read_clip, read_args, text, labels, k, batch_size, workers, limit, clock,
                              DecoderUnavailableError)

    def _pipeline(self, paths, read_clip, read_args, text, labels, k, batch_size, workers, limit, clock,
                  fatal=()):
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
                    yield from self._score(batch, text, labels, k, clock)
                    batch = []
            yield from self._score(batch, text, labels, k, clock)
        finally:
            # A consumer that stops early (an error, Ctrl-C) must not wait for the queued decodes.
            pool.shutdown(wait=True, cancel_futures=True)

    @torch.inference_mode()
    def _score(self, batch, text, labels, k, clock=None):
        clips = [clip for _, clip, _ in batch if clip is not None]
        probs = iter(())
        if clips:
            t0 = time.perf_counter()
            views = np.concatenate(clips)                                    # [sum V, T, 3, S, S]
            p = self.net(self._pixels(views), text).float().softmax(dim=-1)  # [sum V, K]
            counts = [len(c) for c in clips]
            # multi-view: average the softmax scores of each video's views (official 4x3 test)
            probs = iter(torch.stack([g.mean(0) for g in p.split(counts)]).cpu())
            if clock is not None:
                clock["model_s"] += time.perf_counter() - t0
                clock["videos"] += len(clips)
        for path, clip, err in batch:
            if clip is None:
                yield Prediction(path, error=err)
                continue
            score, idx = next(probs).topk(k)
            yield Prediction(path, [(labels[i], float(s)) for s, i in zip(score.tolist(), idx.tolist())])


def default_model_path() -> str:
    """The bundled demonstration model (a small X-CLIP trained by our trainer on the synthetic
    `shapes` data set; README "The bundled model"). Real use takes a released X-CLIP checkpoint."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default_model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"the bundled default model is missing from {path}; reinstall xclip-engine "
                                "or pass a model explicitly")
    return path


def load(source=None, backend: str = "reference", device=None, arch: str | None = None,
         random_init: bool = False, precision: str | None = None) -> Model:
    """Load X-CLIP from a registry name, a transformers folder, an official .pth, our checkpoint,
    or (backends onnxruntime / tensorrt) an export folder. No source: the bundled default model.

    backend "auto" takes the fastest path that computes the reference's answers here: on first use
    of an architecture on a machine it times and verifies every candidate (reference fp32 and bf16
    on a CPU, reference and Triton on a GPU; an export folder's checked precisions) and caches the
    verdict (engine/runtime/choice.py); `model.backend_note` says which and why, `model.choice`
    holds the measurements. `precision`: fp32 | fp16 | int8 picks the graphs of an export folder;
    for the reference backend fp32 (default) or bf16 (engine/fast_cpu.py)."""
    if source is None:
        source = default_model_path()
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
    choice = None
    if backend == "auto":
        from .runtime.choice import choose_for_export, is_export_folder

        if is_export_folder(source):
            choice = choose_for_export(source, device, precision)
            backend, precision = choice.backend, choice.precision
        elif precision in ("fp16", "int8"):
            from .runtime.choice import checkpoint_candidates

            checkpoint_candidates(_default_device(device), precision)   # raises: says where fp16/int8 run
    if backend in ("onnxruntime", "tensorrt"):
        try:
            from xclip_engine.export.runtime import load_runtime
        except ImportError as e:
            raise NotImplementedError(f"backend {backend!r} is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        model = load_runtime(source, backend=backend, device=device, precision=precision)
        model.choice = choice
        model.backend_note = (choice.note if choice else
                              f"{backend} ({getattr(model.net, 'precision', None) or precision or 'default'})")
        return model
    if backend != "auto" and precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: backend {backend!r} runs a checkpoint in fp32 or bf16; fp16 and "
                         "int8 are graphs of an export folder (xclip-engine export, then backend 'onnxruntime' or "
                         "'tensorrt')")
    if precision == "bf16" and backend not in ("reference", "auto"):
        raise ValueError(f"precision='bf16' runs on backend 'reference' (the {backend} kernels are fp32/fp16)")
    loaded = load_model(source, arch=arch, random_init=random_init)
    net = loaded.model
    if backend == "auto":
        from .runtime.choice import choose_for_checkpoint

        choice, net = choose_for_checkpoint(net, device, precision)
        backend, precision = choice.backend, choice.precision
    elif backend == "triton":
        try:
            from xclip_engine.kernels.backend import triton_ops
        except ImportError as e:
            raise NotImplementedError(f"backend 'triton' is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        net.use_ops(triton_ops(device))
    if precision == "bf16" and choice is None:
        from .fast_cpu import to_bf16

        to_bf16(net.eval())
    tokenizer = ClipTokenizer.from_folder(loaded.vocab_dir) if loaded.vocab_dir else ClipTokenizer()
    model = Model(net, tokenizer, device=device, labels=loaded.labels, origin=loaded.origin,
                  kind=loaded.kind, backend=backend)
    model.choice = choice
    model.backend_note = choice.note if choice else f"{backend} ({precision or 'fp32'}, asked for)"
    return model
