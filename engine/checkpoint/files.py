"""Reading checkpoint files safely: tensors and plain data, never arbitrary objects.

Shared by every format's reader (format_*.py): `torch_load_weights` for pickled PyTorch files
(official .pth, pytorch_model.bin, trainer checkpoints), `read_safetensors` for .safetensors.
"""

from __future__ import annotations

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


def torch_load_weights(path: str) -> object:
    """torch.load with weights_only=True; foreign classes become inert _Opaque stand-ins."""
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

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
