"""X-CLIP configurations and the registry of named models.

Shapes follow the released checkpoints (microsoft/VideoX X-CLIP, configs/k400/*.yaml and
models/xclip.py `build_model`): every attention has width/64 heads, except where a config
says otherwise (the tiny test model). The released models use prompts_alpha=0.1,
prompts_layers=2, mit_layers=1; the class defaults in the official code differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar

# Official test-time preprocessing (VideoX X-CLIP/datasets/build.py): ImageNet mean/std on 0..255.
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)


class ModelConfig:
    """What every family's config shares (XCLIPConfig and EVLConfig are frozen dataclasses of it):
    the patch grid, dict/JSON forms, and validated reading of our own field names."""

    family = ""        # "xclip" | "evl": which model definition a config builds
    family_name = ""   # as messages name it
    INT_RANGES: ClassVar[dict] = {}     # field -> (lowest, highest) accepted: far above every release, far below absurd
    FLOAT_RANGES: ClassVar[dict] = {}
    SIZE_NOTE = ""            # a released size, for the too-large message

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def validate(self, origin: str = "config", names: dict[str, str] | None = None):
        """Check types, ranges and the shape rules the model relies on, before anything is built.

        A config read from a file can say anything: a string where a size goes, a zero patch, or
        sizes that would take minutes and gigabytes to build before the weights are even looked at.
        `names` maps our field names to the file's own (transformers' `vision_config.patch_size`),
        so that the message names what the user has to edit. Returns self.
        """
        names = names or {}

        def name(f):
            return names.get(f, f)

        for f, (lo, hi) in self.INT_RANGES.items():
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{origin}: {name(f)} is {v!r} ({type(v).__name__}); expected a whole number "
                                  f"from {lo} to {hi}")
            if not lo <= v <= hi:
                raise ConfigError(f"{origin}: {name(f)} is {v}; expected a whole number from {lo} to {hi}")
        for f, (lo, hi) in self.FLOAT_RANGES.items():
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{origin}: {name(f)} is {v!r}; expected a number")
            if not lo <= v <= hi:
                raise ConfigError(f"{origin}: {name(f)} is {v}; expected a number from {lo} to {hi}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"{origin}: {name('image_size')} = {self.image_size} is not a multiple of "
                              f"{name('patch_size')} = {self.patch_size}")
        self.check_shapes(origin, name)
        n = self.approx_parameters()
        if n > MAX_PARAMETERS:
            raise ConfigError(f"{origin}: this config describes a model of about {n / 1e9:.1f} billion parameters "
                              f"(at most {MAX_PARAMETERS / 1e9:.0f} billion are accepted; {self.SIZE_NOTE}); "
                              "check the sizes in the file")
        return self

    def check_heads(self, width: str, heads: str, origin: str, name) -> None:
        if getattr(self, width) % getattr(self, heads):
            raise ConfigError(f"{origin}: {name(heads)} = {getattr(self, heads)} does not divide "
                              f"{name(width)} = {getattr(self, width)}; each attention head takes an equal share")

    def check_shapes(self, origin: str, name) -> None:
        """The family's own shape rules (heads dividing widths, ...); `name` maps a field to the file's."""

    def approx_parameters(self) -> int:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict, origin: str = "config"):
        """A validated config from a dict of our field names; errors name `origin` and the field."""
        if not isinstance(d, dict):
            raise ConfigError(f"{origin}: the {cls.family_name} config is {type(d).__name__}, expected an object "
                              "of fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown {cls.family_name} config fields {unknown}; known fields: "
                              f"{sorted(known)}")
        return cls(**d).validate(origin, {k: f"config.{k}" for k in known})


@dataclass(frozen=True)
class XCLIPConfig(ModelConfig):
    # vision tower (CCT)
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    # text tower (CLIP text transformer)
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    vocab_size: int = 49408
    context_length: int = 77
    # shared embedding space
    embed_dim: int = 512
    # video
    num_frames: int = 8
    mit_layers: int = 1
    mit_heads: int = 8
    prompt_layers: int = 2
    prompt_heads: int = 8
    prompt_alpha: float = 0.1
    layer_norm_eps: float = 1e-5

    family = "xclip"   # class attributes, not fields: which model definition a config builds, ...
    family_name = "X-CLIP"
    SIZE_NOTE = "X-CLIP L/14 has about 0.5"

    def check_shapes(self, origin: str, name) -> None:
        for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads"),
                             ("embed_dim", "mit_heads"), ("embed_dim", "prompt_heads")):
            self.check_heads(width, heads, origin, name)

    def approx_parameters(self) -> int:
        """Roughly how many parameters the model has (12 w^2 per transformer layer, embeddings, the
        vision tower's message attention); enough to refuse absurd sizes before building them."""
        v, t, e = self.vision_width, self.text_width, self.embed_dim
        return (self.vision_layers * (12 * v * v + 4 * v * v) + 3 * self.patch_size ** 2 * v
                + (self.num_patches + 1) * v + self.text_layers * 12 * t * t
                + (self.vocab_size + self.context_length) * t
                + (self.mit_layers + self.prompt_layers) * 12 * e * e + self.num_frames * e + v * e + t * e)



class ConfigError(ValueError):
    """A config that cannot describe an X-CLIP model; the message names the file and the field."""


# Sane bounds: far above every released X-CLIP (L/14 at 336 px, 32 frames), far below what would
# take minutes and tens of gigabytes to build. Layer counts of the two video heads may be 0.
_INT_RANGES = {
    "image_size": (1, 2048), "patch_size": (1, 512), "vision_width": (1, 8192), "vision_layers": (1, 128),
    "vision_heads": (1, 1024), "text_width": (1, 8192), "text_layers": (1, 128), "text_heads": (1, 1024),
    "vocab_size": (3, 1_000_000), "context_length": (2, 4096), "embed_dim": (1, 8192), "num_frames": (1, 1024),
    "mit_layers": (0, 64), "mit_heads": (1, 1024), "prompt_layers": (0, 64), "prompt_heads": (1, 1024),
}
_FLOAT_RANGES = {"prompt_alpha": (-1e3, 1e3), "layer_norm_eps": (1e-12, 1.0)}
XCLIPConfig.INT_RANGES, XCLIPConfig.FLOAT_RANGES = _INT_RANGES, _FLOAT_RANGES
MAX_PARAMETERS = 4_000_000_000


def _base(patch: int, frames: int) -> XCLIPConfig:
    return XCLIPConfig(patch_size=patch, num_frames=frames)


def _large(frames: int, image_size: int = 224) -> XCLIPConfig:
    # ViT-L/14: vision 1024 wide, 24 layers, 16 heads; text 768 wide, 12 heads; E = 768, so the
    # MIT and the prompt generator have 768/64 = 12 heads (official code, not transformers' defaults).
    return XCLIPConfig(
        image_size=image_size, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
        text_width=768, text_layers=12, text_heads=12, embed_dim=768,
        num_frames=frames, mit_heads=12, prompt_heads=12,
    )


# A model small enough for unit tests on a CPU in milliseconds; same architecture, real vocabulary.
TINY = XCLIPConfig(
    image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
    text_width=64, text_layers=2, text_heads=2, embed_dim=64,
    num_frames=4, mit_heads=2, prompt_heads=2,
)


def xclip_preprocessing(config: XCLIPConfig) -> dict:
    """X-CLIP's test-time preprocessing for `config` (docs/preprocessing.md §2-§5), as data: what an
    export manifest records for other runtimes, and what a second model family states differently."""
    s = config.image_size
    return {"sampling": "tsn-center", "num_frames": config.num_frames, "resize_short_side": int(256 / 224 * s),
            "crop": s, "interpolation": "bilinear (OpenCV, no antialiasing)", "color": "RGB",
            "input_range": "0..255", "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
            "layout": "[B, T, 3, S, S] float32"}


# ---- EVL (docs/model-evl.md) -------------------------------------------------------------------
# EVL's test-time preprocessing (OpenGVLab/efficient-video-recognition): CLIP's mean/std on 0..1.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EVLConfig(ModelConfig):
    """A frozen CLIP ViT backbone with EVL's decoder and a linear head (docs/model-evl.md §2, §11).

    The decoder is as wide as the backbone and reads its last `decoder_layers` blocks. The frame
    stride is preprocessing (docs/preprocessing.md §7), kept here so that a saved model carries it.
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    num_frames: int = 8
    decoder_layers: int = 4
    decoder_heads: int = 12
    decoder_mlp_ratio: float = 4.0
    decoder_dropout: float = 0.5
    num_classes: int = 400
    frame_stride: int = 16
    layer_norm_eps: float = 1e-5

    family = "evl"   # class attributes, not fields: which model definition a config builds, ...
    family_name = "EVL"
    SIZE_NOTE = "EVL L/14 has about 0.35"

    def check_shapes(self, origin: str, name) -> None:
        for heads in ("heads", "decoder_heads"):
            self.check_heads("width", heads, origin, name)
        if self.decoder_layers > self.layers:
            raise ConfigError(f"{origin}: {name('decoder_layers')} = {self.decoder_layers} reads more backbone "
                              f"blocks than there are ({name('layers')} = {self.layers})")

    def approx_parameters(self) -> int:
        """Roughly how many parameters: 12 w^2 per backbone block, the decoder, its tables, the head."""
        w = self.width
        return int(self.layers * 12 * w * w + self.decoder_layers * (4 + 2 * self.decoder_mlp_ratio) * w * w
                   + 2 * self.decoder_layers * (2 * self.grid - 1) ** 2 * w + self.num_classes * w)


_EVL_INT_RANGES = {
    "image_size": (1, 2048), "patch_size": (1, 512), "width": (1, 8192), "layers": (1, 128), "heads": (1, 1024),
    "num_frames": (1, 1024), "decoder_layers": (1, 128), "decoder_heads": (1, 1024), "num_classes": (1, 1_000_000),
    "frame_stride": (1, 1024),
}
EVLConfig.INT_RANGES = _EVL_INT_RANGES
EVLConfig.FLOAT_RANGES = {"decoder_mlp_ratio": (0.01, 64.0), "decoder_dropout": (0.0, 0.99),
                          "layer_norm_eps": (1e-12, 1.0)}


def _evl(backbone: str, frames: int) -> EVLConfig:
    # Release settings (docs/model-evl.md §11): 8 and 16 frames at stride 16, 32 frames at stride 8.
    stride = 8 if frames == 32 else 16
    if backbone == "B/16":
        return EVLConfig(num_frames=frames, frame_stride=stride)
    return EVLConfig(patch_size=14, width=1024, layers=24, heads=16, decoder_heads=16, num_frames=frames,
                     frame_stride=stride)


# A tiny EVL for unit tests: head width 16, a 4 x 4 patch grid, 4 frames.
EVL_TINY = EVLConfig(image_size=32, patch_size=8, width=32, layers=3, heads=2, num_frames=4, decoder_layers=2,
                     decoder_heads=2, num_classes=5, frame_stride=2)


def evl_preprocessing(config: EVLConfig) -> dict:
    """EVL's test-time preprocessing for `config` (docs/preprocessing.md §7-§9), as data: the spec
    the video readers take (engine/video/preprocessing.py writes and checks it), default views "3x1"."""
    from .video.preprocessing import evl_preprocessing as spec  # no torch/PyAV there: a cheap import

    return spec(config.num_frames, config.frame_stride, config.image_size)


def config_from_dict(d: dict, family: str = "xclip", origin: str = "config") -> XCLIPConfig | EVLConfig:
    """A validated config of `family` ("xclip" or "evl") from a dict of our field names."""
    classes = {"xclip": XCLIPConfig, "evl": EVLConfig}
    if family not in classes:
        raise ConfigError(f"{origin}: model family {family!r} is not one of {', '.join(classes)}; a newer "
                          "xclip-engine may know it")
    return classes[family].from_dict(d, origin)


@dataclass(frozen=True)
class RegistryEntry:
    """A named model: its family, architecture, where its weights are, and its preprocessing."""

    name: str
    config: XCLIPConfig | EVLConfig
    hub_id: str | None  # Hugging Face repo with the released weights, if there is one
    note: str = ""
    bundled: str | None = None   # a folder of engine/assets/ that ships the weights with the package

    @property
    def family(self) -> str:   # which model definition and checkpoint readers apply
        return getattr(self.config, "family", "xclip")

    @property
    def preprocessing(self) -> dict:
        return evl_preprocessing(self.config) if self.family == "evl" else xclip_preprocessing(self.config)


_ENTRIES = [
    RegistryEntry("xclip-base-patch32", _base(32, 8), "microsoft/xclip-base-patch32", "Kinetics-400"),
    RegistryEntry("xclip-base-patch32-16-frames", _base(32, 16), "microsoft/xclip-base-patch32-16-frames",
                  "Kinetics-400"),
    RegistryEntry("xclip-base-patch16", _base(16, 8), "microsoft/xclip-base-patch16", "Kinetics-400"),
    RegistryEntry("xclip-base-patch16-16-frames", _base(16, 16), "microsoft/xclip-base-patch16-16-frames",
                  "Kinetics-400"),
    RegistryEntry("xclip-base-patch16-32-frames", _base(16, 32), "microsoft/xclip-base-patch16-zero-shot",
                  "32 frames; the released 32-frame B/16 weights are the zero-shot (Kinetics-400 pretrain) ones"),
    RegistryEntry("xclip-base-patch16-kinetics-600", _base(16, 8), "microsoft/xclip-base-patch16-kinetics-600",
                  "Kinetics-600"),
    RegistryEntry("xclip-large-patch14", _large(8), "microsoft/xclip-large-patch14", "Kinetics-400"),
    RegistryEntry("xclip-large-patch14-16-frames", _large(16, 336), "microsoft/xclip-large-patch14-16-frames",
                  "Kinetics-400, 336 px"),
    RegistryEntry("xclip-large-patch14-kinetics-600", _large(8), "microsoft/xclip-large-patch14-kinetics-600",
                  "Kinetics-600"),
    RegistryEntry("xclip-tiny-test", TINY, None, "random-init test architecture, no weights"),
    # EVL: the released files are not on a hub; load them with their CLIP backbone
    # (xe.load("k400_vitb16_8f_dec4x768.pth", backbone="ViT-B-16.pt")). A name gives the architecture.
    *(RegistryEntry(f"evl-{b.lower().replace('/', '')}-{t}f", _evl(b, t), None,
                    f"Kinetics-400, {b} backbone, {t} frames; weights from the official release + CLIP backbone")
      for b in ("B/16", "L/14") for t in (8, 16, 32)),
    RegistryEntry("evl-tiny-test", EVL_TINY, None, "random-init EVL test architecture, no weights"),
    RegistryEntry("evl-demo", EVLConfig(image_size=64, width=128, layers=4, heads=2, decoder_heads=2,
                                        decoder_dropout=0.1, num_classes=80, frame_stride=3), None,
                  "bundled EVL demonstration model: synthetic shapes, 80 classes", bundled="evl_demo"),
]
REGISTRY: dict[str, RegistryEntry] = {e.name: e for e in _ENTRIES}


def list_models() -> list[str]:
    return list(REGISTRY)


def get_entry(name: str) -> RegistryEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model name {name!r}; known: {', '.join(REGISTRY)}") from None


def get_config(name: str) -> XCLIPConfig:
    return get_entry(name).config
