"""The public API: `load()` a model from any source, then encode, score and classify videos.

    m = xe.load("path/to/xclip-base-patch32")          # transformers folder, .pth, ours, a name
    t = m.encode_text(["eating spaghetti", "surfing"])  # [K, E], cached per label set
    logits = m.logits(pixel_values, t)                  # [B, K]
    preds = m.classify(["a.mp4", "b.mp4"], ["eating spaghetti", "surfing"])

EVL (a closed-set classifier, docs/model-evl.md) is the same Model with no text: its classes are fixed.

    m = xe.load("k400_vitb16_8f_dec4x768.pth", backbone="ViT-B-16.pt")
    logits = m.logits(pixel_values)                     # [B, classes]; m.labels: the class names
    preds = m.classify(["a.mp4"])                       # its own preprocessing and views ("3x1")

Whole runs over files and folders (output files, resume, shards, windows): `xe.infer`, engine/pipeline.py.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from .checkpoint import load_model
from .decode_ahead import classify_stream
from .io.labels import ClosedSetError, check_labels
from .io.results import Prediction  # noqa: F401  (xe.Prediction, the result type, is importable from here)
from .model import XCLIP
from .runtime.device import default_device
from .tokenizer import ClipTokenizer

BACKENDS = ("reference", "onednn", "triton", "onnxruntime", "tensorrt", "openvino")
EXPORT_BACKENDS = ("onnxruntime", "tensorrt", "openvino")   # these run an export folder, not a checkpoint



class Model:
    """A loaded model with what it needs to score videos: the object `xe.load` returns.

    X-CLIP scores any labels through its text tower (a tokenizer). EVL (`family` "evl",
    `closed_set`) has none: `logits(pixels)` gives its fixed classes, named by `labels`;
    `encode_text`, or text passed to `logits`, raises ClosedSetError. Each model reads videos with
    its own `preprocessing` (engine/config.py), which classify and xe.infer apply."""

    choice = None         # backend "auto": the measured Choice (engine/runtime/choice.py)
    backend_note = ""     # which path runs, and why

    def __init__(self, net: XCLIP, tokenizer: ClipTokenizer | None, device=None, labels=None, origin: str = "",
                 kind: str = "", backend: str = "reference", backbone: str | None = None):
        self.device = default_device(device)
        # `net` is the reference XCLIP (any ops backend) or a runtime with the same four calls
        # (encode_text, encode_video, video_features, __call__) and .config: ONNX Runtime, TensorRT.
        # No process-wide settings here (malloc tuning is the CLI's: engine/runtime/cpu_memory.py).
        self.net = net.to(self.device).eval() if isinstance(net, torch.nn.Module) else net
        self.tokenizer = tokenizer
        self.labels = list(labels) if labels else None    # the label set a fine-tuned model came with
        self.origin, self.kind, self.backend = origin, kind, backend
        self.backbone_origin = backbone   # EVL from two files: the CLIP backbone file beside `origin`
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

    @property
    def family(self) -> str:
        """Which model definition: "xclip" or "evl"."""
        return getattr(self.config, "family", "xclip")

    @property
    def closed_set(self) -> bool:
        """True for a classifier of fixed classes (EVL): no text, `labels` name its outputs."""
        return self.family == "evl"

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes if self.closed_set else None

    @property
    def preprocessing(self) -> dict:
        """The test-time preprocessing this model was trained for, as data (engine/config.py):
        what classify and xe.infer read videos with; its "views" (when stated) is their default."""
        from .config import evl_preprocessing, xclip_preprocessing

        return evl_preprocessing(self.config) if self.closed_set else xclip_preprocessing(self.config)

    @property
    def default_views(self) -> str:
        return self.preprocessing.get("views") or "1x1"

    def __repr__(self):
        extra = f", backbone={self.backbone_origin}" if self.backbone_origin else ""
        classes = f", classes={self.num_classes}" if self.closed_set else ""
        return (f"Model({self.origin or 'random'}{extra}, family={self.family}, backend={self.backend}, "
                f"frames={self.num_frames}, size={self.image_size}{classes}, device={self.device})")

    def _closed_set_error(self, what: str) -> ClosedSetError:
        return ClosedSetError(f"{what}: this {self.family.upper()} model is a closed-set classifier of "
                              f"{self.num_classes} classes with no text tower; m.logits(pixel_values) scores its "
                              "classes, m.labels names them (pass a labels file of that many names to rename them)")

    # ---- features -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_text(self, labels) -> torch.Tensor:
        """Label strings (or token ids [K, 77]) -> text features [K, E]; cached per label set."""
        if self.closed_set:
            raise self._closed_set_error("encode_text")
        if torch.is_tensor(labels):
            return self.net.encode_text(labels.to(self.device))
        labels = tuple(check_labels(labels, merge=False))   # rows match the labels asked for
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
            how = ("xe.read_video(path, preprocessing=m.preprocessing)" if self.closed_set
                   else f"xe.read_video(path, num_frames={want[0]}, size={want[2]})")
            raise ValueError(f"pixel_values has shape {tuple(x.shape)}; this model takes [B, {want[0]}, 3, "
                             f"{want[2]}, {want[3]}] ({how})")
        return x.to(self.device, torch.float32)

    @torch.inference_mode()
    def encode_video(self, pixel_values) -> torch.Tensor:
        """pixel_values [B, T, 3, S, S] -> video embeddings [B, E] (as get_video_features); EVL: the
        query token's features [B, C] before the head."""
        return self.net.encode_video(self._pixels(pixel_values))

    @torch.inference_mode()
    def logits(self, pixel_values, text=None) -> torch.Tensor:
        """pixel_values [B, T, 3, S, S] and text features [K, E] (or labels) -> logits [B, K].
        EVL: no text; pixel_values -> logits [B, classes]."""
        if self.closed_set:
            if text is not None:
                raise self._closed_set_error("logits(pixel_values, text)")
            return self.net(self._pixels(pixel_values))
        if text is None:
            raise ValueError("X-CLIP scores labels: pass text features or labels, m.logits(pixel_values, labels)")
        if not torch.is_tensor(text):
            text = self.encode_text(text)
        return self.net(self._pixels(pixel_values), text.to(self.device))

    # ---- files -> answers -----------------------------------------------------------------
    def classify(self, paths, labels=None, topk: int = 5, views: str | None = None, batch_size: int = 8,
                 workers: int = 2, decoder: str = "auto"):
        """Classify video files; one Prediction per path, in order, errors included. `labels` None:
        the model's own; `views` None: the model's default (X-CLIP "1x1", EVL "3x1")."""
        return list(self.classify_iter(paths, labels, topk, views, batch_size, workers=workers, decoder=decoder))

    def classify_iter(self, paths, labels=None, topk: int = 5, views: str | None = None, batch_size: int = 8,
                      workers: int = 2, decoder: str = "auto", prefetch: int | None = None,
                      timings: dict | None = None):
        """Yield Predictions in input order; a video that fails to decode yields its error, and
        the others still get answers. Bad arguments raise here, before any video is read.

        Decoding is pipelined (engine/decode_ahead.py): `workers` threads decode ahead of the
        model, at most `prefetch` videos beyond the batch being scored (default batch_size +
        workers), so memory stays flat however many paths there are; `paths` may be any
        iterable, read lazily. `decoder` (auto | dali | pyav) goes to engine.video.decoders.read_clip.
        `timings`, a dict, gets decode_s (summed over workers), wait_s (the model waiting for
        decoded videos), model_s and videos added to it: where the time went.
        """
        return classify_stream(self, paths, labels, topk=topk, views=views, batch_size=batch_size, workers=workers,
                               decoder=decoder, prefetch=prefetch, timings=timings)


def default_model_path() -> str:
    """The bundled demonstration model (a small X-CLIP trained by our trainer on the synthetic
    `shapes` data set; README "The bundled model"). Real use takes a released X-CLIP checkpoint."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default_model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"the bundled default model is missing from {path}; reinstall xclip-engine "
                                "or pass a model explicitly")
    return path


def load(source=None, backend: str = "reference", device=None, arch: str | None = None,
         random_init: bool = False, precision: str | None = None, backbone=None) -> Model:
    """Load X-CLIP from a registry name, a transformers folder, an official .pth, our checkpoint,
    or (backends onnxruntime / tensorrt / openvino) an export folder. No source: the bundled default model.

    EVL: an official EVL .pth with `backbone`, its CLIP image tower (OpenAI's ViT-B-16.pt, a
    transformers CLIP folder or an open_clip checkpoint; engine/checkpoint/format_evl.py), our own
    format (backbone included: `save_model` writes one), or a registry name `evl-*` with
    random_init. `backbone` with any other source is refused.

    backend "auto" takes the fastest path that computes the reference's answers here: on first use
    of an architecture on a machine it times and verifies every candidate (reference fp32 and bf16
    on a CPU, reference and Triton on a GPU; an export folder's checked precisions) and caches the
    verdict (engine/runtime/choice.py); `model.backend_note` says which and why, `model.choice`
    holds the measurements. `precision`: fp32 | fp16 | int8 picks the graphs of an export folder
    (backend openvino: fp32 | bf16 | int8, bf16 running its fp32 graphs); for the reference backend
    fp32 (default) or bf16 (engine/runtime/bf16.py)."""
    if source is None:
        source = default_model_path()
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
    choice = None
    if backend == "auto":
        from .runtime.choice import is_export_folder
        from .runtime.export_choice import choose_for_export

        if is_export_folder(source):
            choice = choose_for_export(source, device, precision)
            backend, precision = choice.backend, choice.precision
        elif precision in ("fp16", "int8"):
            from .runtime.choice import checkpoint_candidates

            checkpoint_candidates(default_device(device), precision)   # raises: says where fp16/int8 run
    if backend in EXPORT_BACKENDS:
        try:
            from xclip_engine.export.runtime import load_runtime
        except ImportError as e:
            raise NotImplementedError(f"backend {backend!r} is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        _check_export_source(source, backend)
        model = load_runtime(source, backend=backend, device=device, precision=precision)
        model.choice = choice
        model.backend_note = (choice.note if choice else
                              f"{backend} ({getattr(model.net, 'precision', None) or precision or 'default'})")
        return model
    if backend != "auto" and precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: backend {backend!r} runs a checkpoint in fp32 or bf16; fp16 and "
                         "int8 are graphs of an export folder (xclip-engine export, then backend 'onnxruntime', "
                         "'tensorrt' or 'openvino')")
    if precision == "bf16" and backend not in ("reference", "auto"):    # onednn: its GEMM choice is fp32's
        raise ValueError(f"precision='bf16' runs on backend 'reference' (the {backend} kernels are fp32/fp16)")
    loaded = load_model(source, arch=arch, random_init=random_init, backbone=backbone)
    net = loaded.model
    if backend == "auto":
        from .runtime.choice import choose_for_checkpoint

        choice, net = choose_for_checkpoint(net, device, precision)
        backend, precision = choice.backend, choice.precision
    elif backend == "onednn":
        from .model.ops import ONEDNN, onednn_available

        have, why = onednn_available()
        if not have:
            raise NotImplementedError(f"backend 'onednn': {why}; use backend='reference'")
        net.use_ops(ONEDNN)      # the reference arithmetic, fp32 projections on oneDNN's GEMM
    elif backend == "triton":
        try:
            from xclip_engine.kernels.backend import triton_ops
        except ImportError as e:
            raise NotImplementedError(f"backend 'triton' is not available in this version of xclip-engine "
                                      f"({e}); use backend='reference'") from None
        net.use_ops(triton_ops(device))
    if precision == "bf16" and choice is None:
        from .runtime.bf16 import to_bf16

        to_bf16(net.eval())
    if getattr(net.config, "family", "xclip") == "evl":
        tokenizer = None   # a closed-set model has no text tower
    else:
        tokenizer = ClipTokenizer.from_folder(loaded.vocab_dir) if loaded.vocab_dir else ClipTokenizer()
    model = Model(net, tokenizer, device=device, labels=loaded.labels, origin=loaded.origin,
                  kind=loaded.kind, backend=backend, backbone=loaded.meta.get("backbone"))
    model.choice = choice
    model.backend_note = choice.note if choice else f"{backend} ({precision or 'fp32'}, asked for)"
    return model


def _check_export_source(source, backend: str) -> None:
    """Backends onnxruntime, tensorrt and openvino run an export folder: a checkpoint or a registry
    name is refused with the command that exports it (a folder without a manifest is left to
    read_manifest, which says what is missing)."""
    from xclip_engine.export.manifest import ExportFolderError

    if os.path.isdir(os.fspath(source)):
        return
    flag = " --int8" if backend == "openvino" else " --tensorrt" if backend == "tensorrt" else ""
    raise ExportFolderError(f"backend {backend!r} runs an export folder, and {os.fspath(source)!r} is not a folder: "
                            f"export it first (xclip-engine export --model {os.fspath(source)} --out DIR{flag}), "
                            f"then load DIR with backend {backend!r}; or load this model with backend 'reference'")


class ClosedSetScoring:
    """A closed-set Model seen through the calls of a label-scoring loop (encode_text(labels) once,
    then logits(pixels, text)), for loops written for X-CLIP (engine/video/timeline.py): the "text"
    is only the check that the labels name the model's classes."""

    def __init__(self, model: Model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode_text(self, labels):
        from .io.labels import check_class_names

        check_class_names(labels, self._model.num_classes)

    def logits(self, pixel_values, text=None):
        return self._model.logits(pixel_values)
