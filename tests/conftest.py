"""Shared test set-up: seeded RNGs, tests/ importable (helpers.py, video_factory.py)."""

import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny X-CLIP folder as transformers writes it (random init, save_pretrained)."""
    from xclip_factory import TINY_HF, hf_model

    folder = tmp_path_factory.mktemp("tiny-hf")
    hf_model(TINY_HF).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
