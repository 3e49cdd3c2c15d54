"""Which format a file or folder is in: one ordered table of (name, detector, reader).

`read_checkpoint` walks the table and hands the source to the reader of the first detector that
matches; that reader reads its files, converts the keys and builds the model in one straight
path (format_*.py). Another model family or format adds its own module and rows here; nothing
else changes. Order matters where detectors overlap: a folder with both xclip_engine.json and
config.json is ours, and any other file is tried as an official .pth last.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from .convert import CheckpointError
from .files import permission_denied
from .format_evl import is_evl_official, is_torchscript, read_evl_official, refuse_torchscript
from .format_official import is_torch_file, read_official
from .format_ours import (
    OUR_JSON,
    is_ours_folder,
    is_safetensors_file,
    is_trainer_checkpoint,
    read_ours_folder,
    read_ours_safetensors,
    read_trainer_checkpoint,
)
from .format_transformers import is_transformers_folder, read_transformers
from .loaded import Loaded, Source


class Format(NamedTuple):
    name: str
    detect: Callable[[Source], bool]
    read: Callable[[Source, str | None], Loaded]
    uses_backbone: bool = False   # reads Source.backbone (EVL's two-file layout); others refuse one


def _is_export_folder(source: Source) -> bool:
    return source.has("manifest.json")


def _refuse_export_folder(source: Source, arch: str | None) -> Loaded:
    raise CheckpointError(f"{source.path}: is an export folder; load it with backend='onnxruntime'")


def _is_empty_file(source: Source) -> bool:
    return not source.is_dir and os.path.getsize(source.path) == 0


def _refuse_empty_file(source: Source, arch: str | None) -> Loaded:
    raise CheckpointError(f"{source.path}: the file is empty")


FORMATS: list[Format] = [
    Format("xclip-engine folder", is_ours_folder, read_ours_folder),
    Format("transformers folder", is_transformers_folder, read_transformers),
    Format("export folder", _is_export_folder, _refuse_export_folder),
    Format("empty file", _is_empty_file, _refuse_empty_file),
    Format("xclip-engine .safetensors", is_safetensors_file, read_ours_safetensors),
    Format("CLIP TorchScript archive", is_torchscript, refuse_torchscript),   # before anything unpickles it
    Format("trainer checkpoint", is_trainer_checkpoint, read_trainer_checkpoint),   # reads the pickle once
    Format("official EVL .pth", is_evl_official, read_evl_official, uses_backbone=True),
    Format("official VideoX .pth", is_torch_file, read_official),
]


def detect(source: Source) -> Format:
    """The first format whose detector matches `source`."""
    for fmt in FORMATS:
        if fmt.detect(source):
            return fmt
    raise CheckpointError(f"{source.path}: not a model folder: expected config.json + model.safetensors "
                          f"(transformers) or {OUR_JSON} + model.safetensors (xclip-engine)")


def read_checkpoint(path: str, arch: str | None = None, backbone: str | None = None) -> Loaded:
    """Read the model at `path` (an existing file or folder) in whichever format it is in; `backbone`:
    the CLIP file of an official EVL .pth (refused for every format that holds a whole model)."""
    source = Source(path, None if backbone is None else os.fspath(backbone))
    try:
        fmt = detect(source)
        if backbone is not None and not fmt.uses_backbone:
            raise CheckpointError(f"{path}: a {fmt.name} holds the whole model; the backbone {backbone} is not "
                                  "used (backbone= / --backbone goes with an official EVL .pth only)")
        return fmt.read(source, arch)
    except PermissionError as e:   # any file a reader opens itself (config.json, ...): name the cause
        raise permission_denied(e.filename or path) from None
