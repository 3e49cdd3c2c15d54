"""Trainer checkpoints: atomic writes, everything a resume needs, and our model format.

A training checkpoint (`RUN/last.pt`) is one torch file in the layout that
`xclip_engine.engine.checkpoint.load_model` already reads (`format`, `format_version`,
`config`, `model`, `labels`), so `xe.load("RUN/last.pt")` works on it, plus a `train` dict:
optimizer, scheduler and grad-scaler states, the update count, the epoch and the position in
it, the RNG states and the resolved run config. It holds only tensors and plain Python data, so
it loads with `torch.load(weights_only=True)`.

Atomic: written to `NAME.tmp` in the same folder, flushed and fsynced, then `os.replace`d over
the old file (a rename within one file system is atomic on POSIX and Windows), and the folder
fsynced. A run killed at any moment leaves either the previous complete checkpoint or the new
one, never half a file. The final and best models go out in our folder format through
`save_model` (which writes temp files and renames them too).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from xclip_engine.engine.checkpoint import CheckpointError, save_model
from xclip_engine.engine.checkpoint.files import torch_load_weights
from xclip_engine.engine.checkpoint.format_ours import FORMAT_NAME, FORMAT_VERSION
from xclip_engine.engine.io.atomic import atomic_write

CHECKPOINT_NAME = "last.pt"


def atomic_torch_save(obj, path: str) -> str:
    return atomic_write(path, lambda f: torch.save(obj, f))


# ---- RNG states (plain data only, so that weights_only loading accepts them) -----------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    # random.setstate wants the exact nested tuples getstate gave; a save/load may turn them to lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---- save / load ----------------------------------------------------------------------------------
def save_training_checkpoint(path: str, model, labels: list[str], optimizer, scheduler, scaler, *, step: int,
                             epoch: int, update_in_epoch: int, run_config: dict, best: dict | None = None) -> str:
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": getattr(model.config, "family", "xclip"),   # EVL or X-CLIP: which model the config builds
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "labels": list(labels),
        "train": {
            "step": int(step), "epoch": int(epoch), "update_in_epoch": int(update_in_epoch),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "run_config": run_config,
            "best": best or {},
        },
    }
    return atomic_torch_save(state, path)


def resolve_resume(path: str) -> str:
    """A run folder (its last.pt) or a checkpoint file."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume {path}: no such checkpoint; pass a run folder that holds "
                              f"{CHECKPOINT_NAME} or the .pt file itself")
    return path


def load_training_checkpoint(path: str) -> dict:
    path = resolve_resume(path)
    obj = torch_load_weights(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME or "train" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint of xclip-engine (no 'train' state); "
                              "to fine-tune from a model, set model.source instead of --resume")
    obj["path"] = path
    return obj


def export_model(model, folder: str, labels: list[str], vocab_dir: str | None = None, **info) -> str:
    """The model in our folder format with its label list (and tokenizer files, if custom)."""
    save_model(model, folder, labels=labels, **info)
    if vocab_dir:
        from xclip_engine.engine.tokenizer import ClipTokenizer

        ClipTokenizer.from_folder(vocab_dir).save_vocabulary(folder)
    return folder
