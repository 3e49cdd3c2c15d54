"""Checkpoints that cannot load: each error names the file and the offending keys or shapes."""

import json
import sys
import types

import pytest
import torch
from xclip_factory import TINY_HF, hf_model, hf_to_official

import xclip_engine as xe
from xclip_engine.engine.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    hf = hf_model(TINY_HF)
    folder = tmp_path_factory.mktemp("tiny-hf")
    hf.save_pretrained(folder)
    return hf, folder


def test_missing_source_names_it():
    with pytest.raises(CheckpointError, match="no-such-model.*not a model name"):
        xe.load("no-such-model")


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth.*empty"):
        xe.load(str(empty))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        xe.load(str(junk))
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        xe.load(str(junk_st))


def test_folder_without_model(tmp_path):
    with pytest.raises(CheckpointError, match="not a model folder"):
        xe.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xclip"}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        xe.load(str(tmp_path))


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="model_type is 'clip'"):
        xe.load(str(tmp_path))


def test_wrong_shape_names_key_and_shapes(tiny_hf, tmp_path):
    hf, folder = tiny_hf
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"]["num_frames"] = 8          # the weights hold a 4-frame MIT embedding
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as e:
        xe.load(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "mit.position_embedding" in msg and "(1, 4, 64)" in msg and "(1, 8, 64)" in msg


def test_official_checkpoint_of_another_model(tiny_hf, tmp_path):
    hf, _ = tiny_hf
    sd = hf_to_official(hf.state_dict())
    clip_only = {k: v for k, v in sd.items() if not k.startswith(("mit.", "prompts_"))}   # plain CLIP
    path = tmp_path / "clip.pth"
    torch.save({"model": clip_only}, path)
    with pytest.raises(CheckpointError) as e:
        xe.load(str(path), arch="xclip-tiny-test")
    assert "clip.pth" in str(e.value) and "missing keys" in str(e.value) and "mit.resblocks.0" in str(e.value)
    with pytest.raises(CheckpointError, match="not an official X-CLIP checkpoint"):
        torch.save({"model": {"foo": torch.zeros(1)}}, path)
        xe.load(str(path))


def test_arch_that_does_not_fit(tiny_hf, tmp_path):
    hf, _ = tiny_hf
    path = tmp_path / "tiny.pth"
    torch.save({"model": hf_to_official(hf.state_dict())}, path)
    with pytest.raises(CheckpointError, match="does not match --arch xclip-base-patch32.*vision_width"):
        xe.load(str(path), arch="xclip-base-patch32")


def test_unexpected_keys_are_named(tiny_hf, tmp_path):
    hf, _ = tiny_hf
    sd = hf_to_official(hf.state_dict())
    sd["visual.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="unexpected keys:\n  visual.extra_head.weight"):
        xe.load(str(path), arch="xclip-tiny-test")


def test_official_checkpoint_with_pickled_config_loads_weights_only(tiny_hf, tmp_path, monkeypatch):
    """Released .pth files carry the training config (a yacs CfgNode) beside the weights: we read
    them with weights_only=True, the foreign class replaced by an inert stand-in."""
    hf, _ = tiny_hf
    yacs = types.ModuleType("yacs")
    config_mod = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config_mod.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config_mod)
    cfg = CfgNode(MODEL=CfgNode(ARCH="ViT-B/32"), DATA=CfgNode(NUM_FRAMES=4))
    path = tmp_path / "released.pth"
    torch.save({"model": hf_to_official(hf.state_dict()), "config": cfg, "max_accuracy": 0.5}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")   # the loader must not need yacs installed
    model = xe.load(str(path), arch="xclip-tiny-test")
    assert model.kind == "official"


def test_registry_name_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CheckpointError, match="cannot download xclip-base-patch32.*microsoft/xclip-base-patch32"):
        xe.load("xclip-base-patch32")
