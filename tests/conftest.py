"""Shared test set-up: seeded RNGs, tests/ importable (helpers.py, video_factory.py)."""

import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _import_the_hub_kernels_package():
    """transformers (5.25 on) imports the Hugging Face `kernels` package when it is installed (it is
    one of its requirements), by that top-level name. `python -m pytest` from the project root puts
    the root first on sys.path, where our own kernels/ folder (xclip_engine.kernels) would answer the
    import instead and break every transformers model. Import the installed one first, from
    site-packages only; ours is always reached as xclip_engine.kernels and is unaffected."""
    import importlib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        importlib.import_module("kernels")
    except ImportError:   # not installed: transformers does not ask for it either
        pass
    finally:
        sys.path[:] = saved


_import_the_hub_kernels_package()

# backend "auto" keeps its measured verdicts in a per-user cache: the tests (and the commands they
# start, which inherit the environment) use a private one, so they neither read nor change the user's
if "XCLIP_ENGINE_CACHE" not in os.environ:
    import tempfile

    os.environ["XCLIP_ENGINE_CACHE"] = tempfile.mkdtemp(prefix="xclip-engine-test-cache-")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny X-CLIP folder as transformers writes it (random init, save_pretrained)."""
    from xclip_factory import TINY_HF, hf_model

    folder = tmp_path_factory.mktemp("tiny-hf")
    hf_model(TINY_HF).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shapes_test_clips(tmp_path_factory):
    """Held-out test clips of the bundled model's classes: ``(paths, true label ids, label names)``.

    make-dataset keys each clip's RNG by (seed, split, class, index), so with the seed the bundled
    model's data set was made with (0), these are the first 3 test clips of each of its 80
    training classes: clips it never saw in training. 240 clips, ~10 s to write.
    """
    from xclip_engine.train.synthetic import make_shapes_dataset

    out = tmp_path_factory.mktemp("shapes-test")
    make_shapes_dataset(out, seed=0, clips_per_class=1, eval_clips_per_class=3, zeroshot_clips_per_class=1,
                        progress=False)
    with open(out / "test.txt") as f:
        rows = [line.split() for line in f if line.strip()]
    with open(out / "labels_train.csv") as f:
        names = [line.rstrip("\n").split(",", 1)[1] for line in f][1:]  # skip the id,name header
    return [str(out / rel) for rel, _ in rows], [int(label) for _, label in rows], names


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
