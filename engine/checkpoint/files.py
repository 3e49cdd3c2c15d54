"""Reading checkpoint files safely: tensors and plain data, never arbitrary objects.

Shared by every format's reader (format_*.py): `torch_load_weights` for pickled PyTorch files
(official .pth, pytorch_model.bin, trainer checkpoints), `read_safetensors` for .safetensors.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from collections import OrderedDict

import torch

from .convert import CheckpointError


class _Opaque(OrderedDict):
    """Stand-in for a class pickled beside the weights (a yacs CfgNode, argparse.Namespace...).

    Constructing it yields a plain OrderedDict that only keeps what the pickle hands it, so no
    code of the original class runs, and `weights_only=True` (which lets only exact dicts take
    items) can still read a training checkpoint whose extras we do not need.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def permission_denied(path: str) -> CheckpointError:
    """The error for a file that is there but that this user may not read. Said apart from a damaged
    file on purpose: downloading it again does not help, changing its permissions does."""
    return CheckpointError(f"{path}: permission denied: the file exists but this user cannot read it; "
                           f"check the file's permissions (ls -l, chmod a+r) or its owner")


def check_readable(path: str) -> None:
    """Open `path` once for reading, so that a permission problem is named as one before a reader
    (torch, safetensors) reports it as an unreadable or incomplete file."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise permission_denied(path) from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        if e.errno == errno.EACCES:
            raise permission_denied(path) from None
        raise CheckpointError(f"{path}: cannot open it ({os.strerror(e.errno) if e.errno else e})") from None


def read_json(path: str, what: str) -> object:
    """A JSON file of a checkpoint, errors naming the file and what it should be."""
    check_readable(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file; expected {what} (JSON, UTF-8)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                              f"expected {what}") from None


def torch_load_weights(path: str) -> object:
    """torch.load with weights_only=True; foreign classes become inert _Opaque stand-ins."""
    check_readable(path)
    stubs: list = []
    for _ in range(20):
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED.search(str(e))
            if not m:
                raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({e})") from None
            name = m.group(1)
            stubs.append((_Opaque, name))
        except (RuntimeError, EOFError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({e}); "
                                  "is the file complete?") from None
    raise CheckpointError(f"{path}: too many foreign classes in the pickle")


def read_safetensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    check_readable(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
