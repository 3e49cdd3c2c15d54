"""The tensors of a TorchScript archive (OpenAI's CLIP release, `ViT-B-16.pt`), read without running it.

A TorchScript archive is a zip: `<name>/data.pkl` pickles the module tree, `<name>/data/<key>` holds
the raw bytes of each storage, `<name>/code/` the module's TorchScript source. `torch.jit.load`
compiles and keeps that code; `torch.load(weights_only=True)` refuses such archives (torch 2.6+).

Here only data.pkl is unpickled, by an unpickler that accepts nothing but what rebuilds tensors:
the allow-list below. A module class of the archive (`__torch__.*`) becomes an inert `ScriptObject`
that keeps the attributes the pickle hands it; every other global (os.system, builtins.eval, ...)
is refused, naming it. No code from the file is compiled or run; `code/` is never opened.
"""

from __future__ import annotations

import pickle
import zipfile

import torch

from .convert import CheckpointError
from .files import check_readable

_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class ScriptObject:
    """Stand-in for a TorchScript module or class of the archive: its pickled attributes, nothing else."""

    attrs: dict = {}   # replaced, never mutated: NEWOBJ makes the object without __init__

    def __setstate__(self, state):
        self.attrs = dict(state) if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *rest):
    # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _first(value, *rest):
    return value


# (module, name) -> what the unpickler gets instead: our own functions and classes only
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _first,
    ("collections", "OrderedDict"): dict,
    ("torch.jit._pickle", "restore_type_tag"): _first,
    **{("torch.jit._pickle", f"build_{k}list"): list for k in ("int", "float", "bool", "double", "tensor", "generic")},
    **{("torch", name): _StorageType(dtype) for name, dtype in _DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage):
        super().__init__(file)
        self._storage, self.origin = storage, ""

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"{self.origin}: refusing to read it: its pickle asks for {module}.{name}, which "
                                  "the weights of a CLIP archive never need (nothing of the file was run)") from None

    def persistent_load(self, pid):
        # ('storage', <torch.FloatStorage>, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.origin}: an unknown storage record {str(pid)[:80]!r} in data.pkl")
        return self._storage(str(pid[2]), pid[1].dtype)


def is_torchscript_archive(path: str) -> bool:
    """A zip with a data.pkl and TorchScript code beside it (torch.save's zips have no code/)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("data.pkl") for n in names) and any("/code/" in n or n.startswith("code/") for n in names)


def read_torchscript_tensors(path: str) -> dict:
    """Every tensor attribute of the archive's module tree, by its dotted name ('visual.conv1.weight').

    Raises CheckpointError for a file that is not such an archive or whose pickle asks for anything
    beyond tensors and plain data."""
    check_readable(path)
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a TorchScript archive ({e})") from None
    with z:
        pkl = sorted((n for n in z.namelist() if n.endswith("data.pkl")), key=len)
        if not pkl:
            raise CheckpointError(f"{path}: a zip without data.pkl: not a TorchScript archive")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in z.namelist() and z.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: a big-endian archive; this reader takes little-endian ones")
        cache: dict = {}

        def storage(key, dtype):
            if key not in cache:
                try:
                    raw = bytearray(z.read(f"{prefix}data/{key}"))
                except KeyError:
                    raise CheckpointError(f"{path}: data.pkl names storage {key}, which the zip lacks "
                                          "(a damaged download?)") from None
                cache[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            return cache[key]

        with z.open(pkl[0]) as f:
            up = _Unpickler(f, storage)
            up.origin = path
            try:
                root = up.load()
            except CheckpointError:
                raise
            except Exception as e:   # a damaged or foreign pickle: name it, never let it through
                raise CheckpointError(f"{path}: cannot read its data.pkl ({type(e).__name__}: {e})") from None
    out: dict = {}
    _collect(root, "", out, set())
    return out


def _collect(obj, prefix: str, out: dict, seen: set):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    items = obj.attrs.items() if isinstance(obj, ScriptObject) else obj.items() if isinstance(obj, dict) else ()
    for name, value in items:
        if not isinstance(name, str):
            continue
        if torch.is_tensor(value):
            out[prefix + name] = value
        elif isinstance(value, (ScriptObject, dict)):
            _collect(value, f"{prefix}{name}.", out, seen)
