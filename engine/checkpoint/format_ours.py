"""Our format: a folder with xclip_engine.json + model.safetensors, one .safetensors file whose
metadata carries the same JSON, or a trainer checkpoint (train/checkpoint.py: a torch file with
the same fields plus the training state). Keys are our own: no conversion table."""

from __future__ import annotations

import dataclasses
import json
import os

from ..config import XCLIPConfig, config_from_dict
from ..io.atomic import atomic_write, write_via_temp
from .convert import CheckpointError
from .files import read_json, read_safetensors
from .loaded import Loaded, Source, build_strict

FORMAT_NAME = "xclip-engine"
FORMAT_VERSION = 1
OUR_JSON = "xclip_engine.json"
WEIGHTS = "model.safetensors"
SHIPPED_MODE = 0o644   # safetensors creates 0600 files; a shipped model must be readable by all
# our config fields as errors name them: where they sit in the metadata
OUR_NAMES = {f.name: f"config.{f.name}" for f in dataclasses.fields(XCLIPConfig)}


# ---- detectors and readers (detect.py orders them) ---------------------------------------------
def is_ours_folder(source: Source) -> bool:
    return source.has(OUR_JSON)


def read_ours_folder(source: Source, arch: str | None) -> Loaded:
    meta_path = source.file(OUR_JSON)
    config, meta = parse_our_meta(read_json(meta_path, f"the {FORMAT_NAME} metadata"), meta_path)
    weights = source.file(WEIGHTS)
    if not os.path.isfile(weights):
        raise CheckpointError(f"{source.path}: has {OUR_JSON} but no {WEIGHTS} (an interrupted copy?)")
    tensors, _ = read_safetensors(weights)
    model = build_strict(config, tensors, weights, config_origin=meta_path, names=OUR_NAMES)
    return Loaded(model, "xclip-engine", source.path, source.vocab_dir(), meta.get("labels"), meta)


def is_safetensors_file(source: Source) -> bool:
    return not source.is_dir and source.path.endswith(".safetensors")


def read_ours_safetensors(source: Source, arch: str | None) -> Loaded:
    path = source.path
    tensors, meta = read_safetensors(path)
    if "xclip_engine" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without xclip-engine metadata; for a "
                              "transformers checkpoint pass the folder that holds config.json")
    try:
        raw = json.loads(meta["xclip_engine"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the xclip_engine metadata is not valid JSON ({e.msg})") from None
    config, info = parse_our_meta(raw, path)
    model = build_strict(config, tensors, path, names=OUR_NAMES)
    return Loaded(model, "xclip-engine", path, None, info.get("labels"), info)


def is_trainer_checkpoint(source: Source) -> bool:
    if source.is_dir:
        return False
    obj = source.torch_object()
    return isinstance(obj, dict) and obj.get("format") == FORMAT_NAME


def read_trainer_checkpoint(source: Source, arch: str | None) -> Loaded:
    path = source.path
    obj = source.torch_object()
    config, info = parse_our_meta(obj, path)
    model = build_strict(config, obj["model"], path, names=OUR_NAMES)
    return Loaded(model, "xclip-engine", path, None, info.get("labels"),
                  {k: v for k, v in info.items() if k != "model"})


# ---- metadata and saving -----------------------------------------------------------------------
def parse_our_meta(meta: dict, origin: str):
    if not isinstance(meta, dict):
        raise CheckpointError(f"{origin}: the metadata is a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{origin}: not an {FORMAT_NAME} checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version", -1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{origin}: format_version is {version!r}, expected a whole number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{origin}: written by a newer xclip-engine (format_version "
                              f"{meta.get('format_version')} > {FORMAT_VERSION}); upgrade xclip-engine")
    if "config" not in meta:
        raise CheckpointError(f"{origin}: the metadata has no 'config'")
    try:   # validated field by field (engine/config.py) before anything is built
        # files written before EVL existed have no "family": they are X-CLIP
        return config_from_dict(meta["config"], meta.get("family", "xclip"), origin), meta
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{e}" if str(e).startswith(origin) else f"{origin}: bad config ({e})") from None


def save_ours(state_dict: dict, config, path: str, **extra) -> str:
    """Write our format: a folder (model.safetensors + xclip_engine.json) or one .safetensors file.

    Each file is written to a temporary name and renamed (engine/io/atomic.py), so an interrupted
    save never leaves half a file; in a folder the JSON comes last.
    """
    from safetensors.torch import save_file

    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "family": config.family,
            "config": config.to_dict(), **extra}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.endswith(".safetensors"):
        write_via_temp(path, lambda tmp: save_file(tensors, tmp, metadata={"xclip_engine": json.dumps(meta)}),
                       mode=SHIPPED_MODE)
        return path
    os.makedirs(path, exist_ok=True)
    write_via_temp(os.path.join(path, WEIGHTS), lambda tmp: save_file(tensors, tmp), mode=SHIPPED_MODE)
    atomic_write(os.path.join(path, OUR_JSON), lambda f: json.dump(meta, f, indent=2), text=True)
    return path
