"""Apply a key table (keys.py) to a foreign state dict: rename, fuse, transpose, check.

Loading is strict: every parameter of the model must come from the source with the right
shape, and every source tensor must be used or listed as dropped. Errors name the file and
each offending key.
"""

from __future__ import annotations

import re

import torch

from .keys import Fuse, T

_LAYER = re.compile(r"\.(\d+)\.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message says which file and keys."""


def _pattern(key: str) -> tuple[str, list[str]]:
    """'visual.blocks.3.ln_1.weight' -> ('visual.blocks.{}.ln_1.weight', ['3'])."""
    numbers = _LAYER.findall(key)
    return _LAYER.sub(".{}.", key), numbers


def _fetch(rule, numbers, source: dict, used: set):
    if isinstance(rule, Fuse):
        parts = [_fetch(p, numbers, source, used) for p in rule.parts]
        return None if any(p is None for p in parts) else torch.cat(parts, dim=0)
    if isinstance(rule, T):
        t = _fetch(rule.key, numbers, source, used)
        return None if t is None else t.t()
    key = rule.format(*numbers)
    if key not in source:
        return None
    used.add(key)
    return source[key]


def _describe_rule(rule, numbers) -> str:
    if isinstance(rule, Fuse):
        return " + ".join(_describe_rule(p, numbers) for p in rule.parts)
    if isinstance(rule, T):
        return f"transpose({_describe_rule(rule.key, numbers)})"
    return rule.format(*numbers)


_XCLIP_HINT = "Check that the checkpoint is an X-CLIP model of this architecture (--arch / config.json)."


def convert_state_dict(source: dict, target: dict, table: dict, drop=(), origin: str = "checkpoint",
                       hint: str = _XCLIP_HINT) -> dict:
    """Build a state dict with `target`'s keys and shapes from `source` through `table`.

    Raises CheckpointError listing missing keys, unexpected keys and shape mismatches.
    """
    out, used, missing, shapes = {}, set(), [], []
    for key, want in target.items():
        pattern, numbers = _pattern(key)
        rule = table.get(pattern)
        if rule is None:
            raise CheckpointError(f"internal: no key rule for parameter {key!r}")
        tensor = _fetch(rule, numbers, source, used)
        if tensor is None:
            missing.append(_describe_rule(rule, numbers))
            continue
        if tuple(tensor.shape) != tuple(want.shape):
            shapes.append(f"{_describe_rule(rule, numbers)}: {tuple(tensor.shape)} in the file, "
                          f"{tuple(want.shape)} expected for {key}")
            continue
        out[key] = tensor.to(want.dtype).contiguous()
    unexpected = sorted(k for k in source if k not in used and k not in drop)
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensors of the wrong shape:\n  " + "\n  ".join(shapes[:20]))
    if missing:
        problems.append(f"{len(missing)} missing keys:\n  " + "\n  ".join(missing[:20]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys:\n  " + "\n  ".join(unexpected[:20]))
    if problems:
        raise CheckpointError(
            f"{origin} does not fit the model configuration:\n" + "\n".join(problems)
            + "\n" + hint)
    return out


def identity_table(target: dict) -> dict:
    """The key table of a checkpoint already in our layout: every parameter from its own name."""
    return {p: p for p in {_pattern(k)[0] for k in target}}
