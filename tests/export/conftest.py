"""One tiny model exported once per test session (fp32 + fp16 + int8), shared by the export tests.

The model is `tiny_hf` (tests/conftest.py: transformers' random init, save_pretrained);
`reference` is the same folder through xe.load.
Tests that damage a folder work on a copy (`export_copy`).
"""

import shutil

import pytest

import xclip_engine as xe
from xclip_engine.export.onnx_export import export_model


@pytest.fixture(scope="session")
def reference(tiny_hf):
    return xe.load(str(tiny_hf), device="cpu")


@pytest.fixture(scope="session")
def tiny_export(tiny_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-export") / "onnx"
    lines = []
    result = export_model(str(tiny_hf), str(out), fp16=True, int8=True, echo=lines.append)
    result.log = lines
    return result


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    """A private copy of the exported folder (without its cache), for tests that damage it."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_export.folder, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


# ---- EVL: one tiny model exported once per session (fp32 + fp16 + int8), tests/export/test_evl_export.py

EVL_LABELS = ["abseiling", "air drumming", "archery", "playing guitar", "surfing water"]   # EVL_TINY: 5 classes


@pytest.fixture(scope="session")
def evl_reference():
    from evl_factory import scaled_evl

    from xclip_engine.engine.config import EVL_TINY

    return scaled_evl(EVL_TINY)


@pytest.fixture(scope="session")
def evl_export(evl_reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("evl-export") / "onnx"
    lines = []
    result = export_model(model=evl_reference, out=str(out), labels=EVL_LABELS, fp16=True, int8=True,
                          echo=lines.append)
    result.log = lines
    return result


@pytest.fixture(scope="session")
def evl_labels():
    return list(EVL_LABELS)
