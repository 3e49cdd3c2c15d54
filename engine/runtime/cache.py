"""Where `backend="auto"` remembers its verdicts: one JSON file per user, keyed by a fingerprint of
the machine, the software and the model architecture.

    fp = fingerprint(device, arch={...})          # what a verdict depends on
    entry = read_verdict(fp)                      # None: never measured, or the file is stale/corrupt
    write_verdict(fp, {...})

The file lives in $XCLIP_ENGINE_CACHE, else $XDG_CACHE_HOME/xclip-engine, else ~/.cache/xclip-engine.
A verdict is trusted only when its stored fingerprint equals the one asked for (a different CPU,
torch, package version or architecture measures again) and it has the fields a verdict needs; a file
that does not parse is set aside and rebuilt, never trusted and never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings

import torch

CACHE_ENV = "XCLIP_ENGINE_CACHE"
FILE = "auto-choice.json"
FORMAT = 1
VERDICT_FIELDS = ("backend", "precision", "paths")


def cache_dir() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xclip-engine")


def cache_path() -> str:
    return os.path.join(cache_dir(), FILE)


def cpu_info() -> dict:
    """The CPU's model name and feature flags as Linux lists them (platform's answer elsewhere)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = sorted(value.split())
    except OSError:
        pass
    return {"model": name, "flags": flags, "cores": os.cpu_count()}


def fingerprint(device: torch.device, arch: dict) -> dict:
    """What a verdict depends on: the CPU (model, flags, cores), the GPU, torch and package versions,
    torch's thread count, and the model architecture (or an export folder's graph hashes)."""
    import xclip_engine

    cpu = cpu_info()
    fp = {"cpu": cpu["model"], "cpu_flags": hashlib.sha256(" ".join(cpu["flags"]).encode()).hexdigest()[:16],
          "cores": cpu["cores"], "threads": torch.get_num_threads(), "torch": torch.__version__,
          "xclip_engine": xclip_engine.__version__, "device": device.type, "arch": arch}
    if device.type == "cuda":
        fp["gpu"] = torch.cuda.get_device_name(device)
    return fp


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()


def _read_all() -> dict:
    path = cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError(f"not a format-{FORMAT} verdict file")
        return data
    except FileNotFoundError:
        return {"format": FORMAT, "entries": {}}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"backend auto: the verdict cache {path} is unreadable ({type(e).__name__}: {e}); "
                      "measuring again and rewriting it", stacklevel=3)
        return {"format": FORMAT, "entries": {}}


def read_verdict(fp: dict) -> dict | None:
    entry = _read_all()["entries"].get(_key(fp))
    if not isinstance(entry, dict) or entry.get("fingerprint") != fp:
        return None   # never measured, or stale: a hash collision or a hand-edited entry is not trusted
    verdict = entry.get("verdict")
    if not isinstance(verdict, dict) or any(k not in verdict for k in VERDICT_FIELDS):
        return None
    return verdict


def write_verdict(fp: dict, verdict: dict) -> str | None:
    """Store `verdict` for `fp`; returns the file, or None when the folder is not writable (the
    verdict then lives for this process only: measuring again next time is the only cost)."""
    from ..io.atomic import atomic_write

    data = _read_all()
    data["entries"][_key(fp)] = {"fingerprint": fp, "verdict": verdict}
    try:
        return atomic_write(cache_path(), lambda f: json.dump(data, f, indent=1, sort_keys=True), text=True)
    except OSError as e:
        warnings.warn(f"backend auto: cannot write the verdict cache {cache_path()} ({e}); set {CACHE_ENV} to a "
                      "writable folder to keep verdicts between runs", stacklevel=3)
        return None
