"""What every format's reader shares: the source it reads, the last step (keys converted into a
strictly loaded model) and what it returns (`Loaded`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import XCLIPConfig, get_entry
from ..model import EVL, XCLIP, build_model
from .convert import (
    CheckpointError,
    _describe_rule,
    _fetch,
    _pattern,
    convert_state_dict,
    identity_table,
)
from .files import torch_load_weights

_UNREAD = object()


@dataclass
class Loaded:
    model: XCLIP | EVL
    kind: str                      # "transformers" | "official" | "xclip-engine" | "random"
    origin: str                    # the file or folder the weights came from
    vocab_dir: str | None = None   # folder with vocab.json + merges.txt, if the source has one
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)


class Source:
    """A file or folder on disk, as the detectors (detect.py) and readers see it. A pickled
    PyTorch file is read once: a detector that looks inside it leaves the object to the reader."""

    def __init__(self, path: str, backbone: str | None = None):
        self.path = path
        self.backbone = backbone    # EVL: the CLIP backbone file given beside the checkpoint (format_evl.py)
        self.is_dir = os.path.isdir(path)
        self._torch = _UNREAD

    def has(self, name: str) -> bool:
        """The folder holds the file `name`."""
        return self.is_dir and os.path.isfile(os.path.join(self.path, name))

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def vocab_dir(self) -> str | None:
        """The folder itself when it carries its own tokenizer files."""
        return self.path if self.has("vocab.json") and self.has("merges.txt") else None

    def torch_object(self):
        if self._torch is _UNREAD:
            self._torch = torch_load_weights(self.path)
        return self._torch


# Tensors whose shapes spell out the config, in our key layout: (key, the shape `config` implies,
# the field each dimension comes from). Together with the layer counts below they fix every size
# in XCLIPConfig, so when they agree the model's shapes do too (4x MLPs are checked by the readers).
_SHAPE_FACTS = [
    ("visual.conv1.weight", lambda c: (c.vision_width, 3, c.patch_size, c.patch_size),
     ("vision_width", None, "patch_size", "patch_size")),
    ("visual.positional_embedding", lambda c: (c.num_patches + 1, c.vision_width), ("image_size", "vision_width")),
    ("text.token_embedding.weight", lambda c: (c.vocab_size, c.text_width), ("vocab_size", "text_width")),
    ("text.positional_embedding", lambda c: (c.context_length, c.text_width), ("context_length", "text_width")),
    ("text.text_projection", lambda c: (c.text_width, c.embed_dim), ("text_width", "embed_dim")),
    ("mit.positional_embedding", lambda c: (1, c.num_frames, c.embed_dim), (None, "num_frames", "embed_dim")),
]
_LAYER_FACTS = [("vision_layers", "visual.blocks.{}.ln_1.weight"), ("text_layers", "text.blocks.{}.ln_1.weight"),
                ("mit_layers", "mit.blocks.{}.ln_1.weight"),
                ("prompt_layers", "prompts_generator.layers.{}.norm1.weight")]


def check_config_against_weights(config: XCLIPConfig, tensors: dict, origin: str, table=None,
                                 config_origin: str | None = None, names: dict | None = None) -> None:
    """Compare the config's sizes with the weights' own shapes and layer counts, without building
    anything: a config that does not describe these weights fails in milliseconds, naming the
    config file, the field, the tensor and both shapes, instead of after building a model of the
    config's size. Tensors that are absent are left to the strict load, which lists them."""
    config_origin, names = config_origin or origin, names or {}

    def rule_of(key):
        return key if table is None else table.get(_pattern(key)[0])

    def shape(rule, numbers):
        if rule is None:
            return None
        try:
            t = _fetch(rule, numbers, tensors, set())
        except RuntimeError:   # e.g. a transposed rule on a tensor that is not 2-D: the strict load names it
            return None
        return None if t is None or not hasattr(t, "shape") else tuple(t.shape)

    def fields(fs):
        return ", ".join(f"{names.get(f, f)} = {getattr(config, f)}" for f in dict.fromkeys(fs))

    for key, expect, dims in _SHAPE_FACTS:
        rule = rule_of(key)
        have, want = shape(rule, []), expect(config)
        if have is None or have == want:
            continue
        wrong = [f for f, a, b in zip(dims, have, want, strict=False) if f and a != b] if len(have) == len(want) \
            else [f for f in dims if f]
        raise CheckpointError(
            f"{config_origin}: {fields(wrong)} does not fit the weights: {_describe_rule(rule, [])} in {origin} "
            f"has shape {have}, this config expects {want} (for {key})")
    for field_name, key in _LAYER_FACTS:
        rule = rule_of(key)
        count = 0
        while rule is not None and count < 10_000 and shape(rule, [str(count)]) is not None:
            count += 1
        if count and count != getattr(config, field_name):
            raise CheckpointError(
                f"{config_origin}: {fields([field_name])} does not fit the weights: {origin} has {count} such "
                f"layers ({_describe_rule(rule, ['0'])} ... {_describe_rule(rule, [str(count - 1)])})")


def build_strict(config, tensors: dict, origin: str, table=None, drop=(),
                 config_origin: str | None = None, names: dict | None = None):
    """A model of `config` (its family's) with `tensors` (converted through the key `table`; None:
    our own keys) loaded strictly, in eval mode. An X-CLIP config is checked against the tensors'
    shapes first."""
    if config.family == "xclip":
        check_config_against_weights(config, tensors, origin, table, config_origin, names)
    model = build_model(config)
    target = model.state_dict()
    sd = convert_state_dict(tensors, target, identity_table(target) if table is None else table, drop, origin)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def arch_config(arch: str | None, inferred: XCLIPConfig, origin: str) -> XCLIPConfig:
    """The registry config of `arch` (None: `inferred`), checked against what the file says."""
    if arch is None:
        return inferred
    cfg = get_entry(arch).config
    # head counts cannot be read off shapes; everything else must agree with the file
    shape_fields = {k: v for k, v in inferred.to_dict().items() if not k.endswith("_heads") and k != "prompt_alpha"}
    diff = {k: (v, getattr(cfg, k)) for k, v in shape_fields.items() if getattr(cfg, k) != v}
    if diff:
        rows = ", ".join(f"{k}: file {a} vs {arch} {b}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{origin}: does not match --arch {arch} ({rows})")
    return cfg
