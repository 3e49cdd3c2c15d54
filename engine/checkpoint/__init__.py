"""Load a model (X-CLIP or EVL) from any supported source: `load_model(source)`.

Sources: a registry name (weights through huggingface_hub), a transformers X-CLIP folder, an
official VideoX .pth, an official EVL .pth with its CLIP backbone (`backbone=`: format_evl.py,
backbone_formats.py), or a checkpoint of ours (folder or .safetensors file, either family). A name is resolved
here to a folder (the hub's download) or a random model; a file or folder goes to detect.py,
whose table picks the format's reader (format_*.py), which reads the files, converts the foreign
key layout through its key table (keys.py, convert.py) and loads the result strictly.
"""

from __future__ import annotations

import os
import warnings

from ..config import REGISTRY, get_entry
from ..model import build_model
from .convert import CheckpointError
from .detect import read_checkpoint
from .format_ours import save_ours
from .loaded import Loaded

__all__ = ["CheckpointError", "Loaded", "load_model", "save_model"]


def _from_hub(name: str) -> str:
    entry = get_entry(name)
    if entry.hub_id is None:
        raise CheckpointError(f"{name} has no released weights; use random_init=True for a random model")
    from huggingface_hub import snapshot_download  # imported here: only a download needs it
    patterns = ["config.json", "*.safetensors", "*.json", "merges.txt", "vocab.json"]
    try:
        return snapshot_download(entry.hub_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(entry.hub_id, allow_patterns=patterns)
    except Exception as e:
        raise CheckpointError(
            f"cannot download {name} ({entry.hub_id}) from the Hugging Face hub: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}\nWith no network here, download the folder on a "
            f"machine that has one (`huggingface-cli download {entry.hub_id} --local-dir DIR`), copy it over "
            "and pass DIR as the model.") from None


def bundled_path(folder: str) -> str:
    """The folder of engine/assets/ holding a model that ships with the package."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", folder)
    if not os.path.isdir(path):
        raise CheckpointError(f"the bundled model folder {path} is missing; reinstall xclip-engine")
    return path


def load_model(source: str, arch: str | None = None, random_init: bool = False,
               backbone: str | None = None) -> Loaded:
    """Read `source` into a reference model (XCLIP or EVL) in eval mode. See the module docstring for
    sources; `backbone`: the CLIP file of an official EVL .pth (format_evl.py)."""
    source = os.fspath(source)
    if not os.path.exists(source):
        if source in REGISTRY:
            entry = get_entry(source)
            if backbone is not None:
                if entry.family != "evl":
                    raise CheckpointError(f"{source} is an X-CLIP model: the backbone {backbone} is not used "
                                          "(backbone= goes with an official EVL .pth)")
                raise CheckpointError(f"{source} names an architecture only (no weights to go with the backbone "
                                      f"{backbone}): load the official EVL .pth with backbone=")
            if entry.bundled and not random_init:   # weights shipped with the package (engine/assets/)
                return read_checkpoint(bundled_path(entry.bundled), arch)
            if random_init or entry.hub_id is None:
                if not random_init:   # a name with no released weights: say so, unless asked for
                    warnings.warn(f"{source}: random weights (no checkpoint loaded)", stacklevel=2)
                labels = None
                if entry.family == "evl" and entry.config.num_classes == 400:   # the releases' Kinetics-400
                    from ..io.labels import load_labels

                    labels = load_labels("k400")
                return Loaded(build_model(entry.config).eval(), "random", source, labels=labels)
            source = _from_hub(source)
        else:
            raise CheckpointError(f"{source}: no such file or folder, and not a model name "
                                  f"(known names: {', '.join(REGISTRY)}; `xclip-engine models` lists them)")
    return read_checkpoint(source, arch, backbone)


def save_model(model, path: str, labels: list[str] | None = None, **extra) -> str:
    """Save in our format (folder, or one file when `path` ends with .safetensors). `model`: a network
    (XCLIP, EVL) or a loaded `xe.Model`, whose label set is saved unless `labels` is given (an EVL
    loaded from its .pth and backbone is saved as one model, backbone included)."""
    if hasattr(model, "net") and hasattr(model.net, "state_dict"):   # an xe.Model: its network and labels
        labels = model.labels if labels is None else labels
        model = model.net
    if labels is not None:
        extra["labels"] = list(labels)
    return save_ours(model.state_dict(), model.config, path, **extra)
