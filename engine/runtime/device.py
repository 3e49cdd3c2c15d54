"""The one default device rule: the first CUDA GPU when torch sees one, else the CPU."""

from __future__ import annotations

import torch


def default_device(device=None) -> torch.device:
    """`device` as a torch.device; None means cuda when a GPU is visible, else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
