"""The public API: `load()` a model from any source, then encode, score and classify videos.

    m = xe.load("path/to/xclip-base-patch32")          # transformers folder, .pth, ours, a name
    t = m.encode_text(["eating spaghetti", "surfing"])  # [K, E], cached per label set
    logits = m.logits(pixel_values, t)                  # [B, K]
    preds = m.classify(["a.mp4", "b.mp4"], ["eating spaghetti", "surfing"])
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import load_model
from .labels import check_labels
from .model import XCLIP
from .tokenizer import ClipTokenizer
from .video import VideoError, read_video

BACKENDS = ("reference", "triton", "onnxruntime", "tensorrt")


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

    def __init__(self, net: XCLIP, tokenizer: ClipTokenizer, device=None, labels=None, origin: str = "",
                 kind: str = "", backend: str = "reference"):
        self.device = _default_device(device)
        # `net` is the reference XCLIP (any ops backend) or a runtime with the same four calls
        # (encode_text, encode_video, video_features, __call__) and .config: ONNX Runtime, TensorRT.
        self.net = net.to(self.device).eval() if isinstance(net, torch.nn.Module) else net
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
    def classify(self, paths, labels=None, topk: int = 5, views: str = "1x1", batch_size: int = 8):
        """Classify video files; one Prediction per path, in order, errors included."""
        return list(self.classify_iter(paths, labels, topk, views, batch_size))

    def classify_iter(self, paths, labels=None, topk: int = 5, views: str = "1x1", batch_size: int = 8,
                      workers: int = 2):
        """Yield Predictions in input order; a video that fails to decode yields its error, and
        the others still get answers. Decoding runs ahead in threads (PyAV releases the GIL)."""
        if labels is None:
            if not self.labels:
                raise ValueError("no labels given and the model has no label set of its own: pass labels")
            labels = self.labels
        labels = check_labels(labels)
        if batch_size < 1 or topk < 1:
            raise ValueError(f"batch_size ({batch_size}) and topk ({topk}) must be at least 1")
        text = self.encode_text(labels)
        k = min(topk, len(labels))
        c = self.config

        def decode(path):
            try:
                return read_video(path, num_frames=c.num_frames, size=c.image_size, views=views), None
            except VideoError as e:
                return None, str(e)
            except Exception as e:  # an unexpected decoder failure must not end the batch
                return None, f"{path}: could not read the video ({type(e).__name__}: {e})"

        paths = [os.fspath(p) for p in paths]
        batch: list = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, (clip, err) in zip(paths, pool.map(decode, paths)):
                batch.append((path, clip, err))
                if sum(clip is not None for _, clip, _ in batch) >= batch_size:
                    yield from self._score(batch, text, labels, k)
                    batch = []
            yield from self._score(batch, text, labels, k)

    @torch.inference_mode()
    def _score(self, batch, text, labels, k):
        clips = [clip for _, clip, _ in batch if clip is not None]
        probs = iter(())
        if clips:
            views = np.concatenate(clips)                                    # [sum V, T, 3, S, S]
            p = self.net(self._pixels(views), text).float().softmax(dim=-1)  # [sum V, K]
            counts = [len(c) for c in clips]
            # multi-view: average the softmax scores of each video's views (official 4x3 test)
            probs = iter(torch.stack([g.mean(0) for g in p.split(counts)]).cpu())
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
    `precision` (fp32 | fp16 | int8) picks the graphs of an export folder."""
    if source is None:
        source = default_model_path()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "tensorrt"):
        try:
            from xclip_engine.export.runtime import load_runtime
        except ImportError as e:
            raise NotImplementedError(f"backend {backend!r} is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        return load_runtime(source, backend=backend, device=device, precision=precision)
    if precision is not None:
        raise ValueError(f"precision={precision!r} applies to export folders (backend 'onnxruntime' or 'tensorrt'); "
                         f"backend {backend!r} runs the checkpoint in fp32")
    loaded = load_model(source, arch=arch, random_init=random_init)
    net = loaded.model
    if backend == "triton":
        try:
            from xclip_engine.kernels.backend import triton_ops
        except ImportError as e:
            raise NotImplementedError(f"backend 'triton' is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        net.use_ops(triton_ops(device))
    tokenizer = ClipTokenizer.from_folder(loaded.vocab_dir) if loaded.vocab_dir else ClipTokenizer()
    return Model(net, tokenizer, device=device, labels=loaded.labels, origin=loaded.origin,
                 kind=loaded.kind, backend=backend)
