"""What every format's reader shares: the source it reads, the last step (keys converted into a
strictly loaded model) and what it returns (`Loaded`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import XCLIPConfig, get_entry
from ..model import XCLIP
from .convert import CheckpointError, convert_state_dict, identity_table
from .files import torch_load_weights

_UNREAD = object()


@dataclass
class Loaded:
    model: XCLIP
    kind: str                      # "transformers" | "official" | "xclip-engine" | "random"
    origin: str                    # the file or folder the weights came from
    vocab_dir: str | None = None   # folder with vocab.json + merges.txt, if the source has one
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)


class Source:
    """A file or folder on disk, as the detectors (detect.py) and readers see it. A pickled
    PyTorch file is read once: a detector that looks inside it leaves the object to the reader."""

    def __init__(self, path: str):
        self.path = path
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


def build_xclip(config: XCLIPConfig, tensors: dict, origin: str, table=None, drop=()) -> XCLIP:
    """An XCLIP of `config` with `tensors` (converted through the key `table`; None: our own keys)
    loaded strictly, in eval mode."""
    model = XCLIP(config)
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
