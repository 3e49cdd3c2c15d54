"""Load an X-CLIP model from any supported source: `load_model(source)`.

Sources: a registry name (weights through huggingface_hub), a transformers X-CLIP folder, an
official VideoX .pth, or a checkpoint of ours (folder or .safetensors file). The format is
detected from sentinel files and keys, the foreign key layout converted by a declarative table
(keys.py), and the result loaded strictly.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

from ..config import REGISTRY, XCLIPConfig, get_entry
from ..model import XCLIP
from . import keys
from .convert import CheckpointError, convert_state_dict
from .formats import (
    OUR_JSON,
    config_from_official,
    official_state_dict,
    parse_our_meta,
    read_safetensors,
    read_transformers_folder,
    save_ours,
    torch_load_weights,
)

__all__ = ["CheckpointError", "Loaded", "load_model", "save_model"]


@dataclass
class Loaded:
    model: XCLIP
    kind: str                      # "transformers" | "official" | "xclip-engine" | "random"
    origin: str                    # the file or folder the weights came from
    vocab_dir: str | None = None   # folder with vocab.json + merges.txt, if the source has one
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)


def _build(config: XCLIPConfig, tensors: dict, table, drop, origin: str) -> XCLIP:
    model = XCLIP(config)
    target = model.state_dict()
    if table is None:   # our own keys: the identity table
        sd = convert_state_dict(tensors, target, {k: k for k in _patterns(target)}, (), origin)
    else:
        sd = convert_state_dict(tensors, target, table, drop, origin)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _patterns(target: dict) -> set:
    from .convert import _pattern

    return {_pattern(k)[0] for k in target}


def _official_config(arch: str | None, sd: dict, origin: str) -> XCLIPConfig:
    if arch is None:
        return config_from_official(sd, origin)
    try:
        inferred = config_from_official(sd, origin)
    except CheckpointError:   # too little there to infer: the strict load will list what is missing
        return get_entry(arch).config
    return _arch_config(arch, inferred, origin)


def _arch_config(arch: str | None, inferred: XCLIPConfig, origin: str) -> XCLIPConfig:
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


def _from_hub(name: str) -> str:
    entry = get_entry(name)
    if entry.hub_id is None:
        raise CheckpointError(f"{name} has no released weights; use random_init=True for a random model")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of the package
        raise CheckpointError("huggingface_hub is not installed; pip install huggingface_hub") from None
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


def load_model(source: str, arch: str | None = None, random_init: bool = False) -> Loaded:
    """Read `source` into a reference XCLIP in eval mode. See the module docstring for sources."""
    source = os.fspath(source)
    if not os.path.exists(source):
        if source in REGISTRY:
            entry = get_entry(source)
            if random_init or entry.hub_id is None:
                if not random_init:   # a name with no released weights: say so, unless asked for
                    warnings.warn(f"{source}: random weights (no checkpoint loaded)", stacklevel=2)
                return Loaded(XCLIP(entry.config).eval(), "random", source)
            source = _from_hub(source)
        else:
            raise CheckpointError(f"{source}: no such file or folder, and not a model name "
                                  f"(known names: {', '.join(REGISTRY)}; `xclip-engine models` lists them)")
    if os.path.isdir(source):
        return _load_folder(source, arch)
    return _load_file(source, arch)


def _load_folder(folder: str, arch: str | None) -> Loaded:
    ours = os.path.join(folder, OUR_JSON)
    vocab = folder if all(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")) else None
    if os.path.isfile(ours):
        with open(ours, encoding="utf-8") as f:
            config, meta = parse_our_meta(json.load(f), ours)
        weights = os.path.join(folder, "model.safetensors")
        if not os.path.isfile(weights):
            raise CheckpointError(f"{folder}: has {OUR_JSON} but no model.safetensors (an interrupted copy?)")
        tensors, _ = read_safetensors(weights)
        model = _build(config, tensors, None, (), weights)
        return Loaded(model, "xclip-engine", folder, vocab, meta.get("labels"), meta)
    if os.path.isfile(os.path.join(folder, "config.json")):
        config, tensors = read_transformers_folder(folder)
        if arch is not None:
            config = _arch_config(arch, config, folder)
        model = _build(config, tensors, keys.TRANSFORMERS, keys.DROP_TRANSFORMERS, folder)
        return Loaded(model, "transformers", folder, vocab)
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        raise CheckpointError(f"{folder}: is an export folder; load it with backend='onnxruntime'")
    raise CheckpointError(f"{folder}: not a model folder: expected config.json + model.safetensors "
                          f"(transformers) or {OUR_JSON} + model.safetensors (xclip-engine)")


def _load_file(path: str, arch: str | None) -> Loaded:
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.endswith(".safetensors"):
        tensors, meta = read_safetensors(path)
        if "xclip_engine" not in meta:
            raise CheckpointError(f"{path}: a safetensors file without xclip-engine metadata; for a "
                                  "transformers checkpoint pass the folder that holds config.json")
        config, info = parse_our_meta(json.loads(meta["xclip_engine"]), path)
        return Loaded(_build(config, tensors, None, (), path), "xclip-engine", path, None, info.get("labels"), info)
    obj = torch_load_weights(path)
    if isinstance(obj, dict) and obj.get("format") == "xclip-engine":   # a trainer checkpoint of ours
        config, info = parse_our_meta(obj, path)
        return Loaded(_build(config, obj["model"], None, (), path), "xclip-engine", path, None,
                      info.get("labels"), {k: v for k, v in info.items() if k != "model"})
    sd = official_state_dict(obj, path)
    config = _official_config(arch, sd, path)
    model = _build(config, sd, keys.OFFICIAL, keys.DROP_OFFICIAL, path)
    return Loaded(model, "official", path)


def save_model(model: XCLIP, path: str, labels: list[str] | None = None, **extra) -> str:
    """Save in our format (folder, or one file when `path` ends with .safetensors)."""
    if labels is not None:
        extra["labels"] = list(labels)
    return save_ours(model.state_dict(), model.config, path, **extra)
