"""Configs are validated before anything is built: wrong types, out-of-range sizes and configs
that do not describe the weights fail fast, naming the file, the field and the shapes."""

import json
import shutil
import time

import pytest
import torch
from click.testing import CliRunner
from xclip_factory import TINY_HF, hf_model

import xclip_engine as xe
from xclip_engine.engine import cli
from xclip_engine.engine.checkpoint import CheckpointError, files, save_model
from xclip_engine.engine.config import TINY, ConfigError, XCLIPConfig
from xclip_engine.engine.model import XCLIP


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-hf")
    hf_model(TINY_HF).save_pretrained(folder)
    return folder


def with_config(tiny_hf, tmp_path, edit):
    """A copy of the tiny transformers folder whose config.json went through `edit(cfg)`."""
    cfg = json.loads((tiny_hf / "config.json").read_text())
    edit(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(tiny_hf / "model.safetensors", tmp_path / "model.safetensors")
    return tmp_path


def set_vision(**kw):
    return lambda cfg: cfg["vision_config"].update(kw)


@pytest.mark.parametrize("edit, message", [
    (lambda cfg: cfg.update(vision_config="abc"), r"vision_config is 'abc'; expected an object"),
    (lambda cfg: cfg.update(text_config=[1, 2]), r"text_config is \[1, 2\]; expected an object"),
    (set_vision(patch_size=0), r"vision_config.patch_size is 0; expected a whole number from 1"),
    (set_vision(num_frames=-5), r"vision_config.num_frames is -5"),
    (set_vision(num_frames="8"), r"vision_config.num_frames is '8' \(str\)"),
    (set_vision(image_size=32.5), r"vision_config.image_size is 32.5 \(float\)"),
    (set_vision(num_hidden_layers=100000), r"vision_config.num_hidden_layers is 100000; .* to 128"),
    (set_vision(num_attention_heads=3), r"vision_config.num_attention_heads = 3 does not divide "
                                        r"vision_config.hidden_size = 64"),
    (set_vision(image_size=36), r"vision_config.image_size = 36 is not a multiple of vision_config.patch_size = 8"),
    (set_vision(layer_norm_eps="small"), r"vision_config.layer_norm_eps is 'small'"),
    (lambda cfg: cfg.update(projection_dim=None), r"projection_dim is None"),
    (set_vision(hidden_size=8192, intermediate_size=32768, num_hidden_layers=128), r"billion parameters"),
])
def test_bad_config_json_names_file_and_field(tiny_hf, tmp_path, edit, message):
    folder = with_config(tiny_hf, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as e:
        xe.load(str(folder))
    assert str(folder / "config.json") in str(e.value)


def test_config_not_json_or_not_an_object(tiny_hf, tmp_path):
    folder = with_config(tiny_hf, tmp_path, lambda cfg: None)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON \(line 1"):
        xe.load(str(folder))
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json: holds a JSON list"):
        xe.load(str(folder))


def test_config_that_does_not_fit_the_weights_fails_before_building(tiny_hf, tmp_path, monkeypatch):
    """Large sizes with the tiny model's weights: refused from the weights' shapes in milliseconds,
    without building a 2048-wide, 24-layer model first (that took 41 s and 12.5 GB)."""
    folder = with_config(tiny_hf, tmp_path, set_vision(hidden_size=2048, intermediate_size=8192,
                                                       num_hidden_layers=24, num_attention_heads=16))
    built = []
    monkeypatch.setattr(XCLIP, "__init__", lambda self, *a, **k: built.append(1) or 1 / 0)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        xe.load(str(folder))
    assert time.perf_counter() - start < 5 and not built
    msg = str(e.value)
    assert str(folder / "config.json") in msg and "vision_config.hidden_size = 2048" in msg
    assert "vision_model.embeddings.patch_embedding.weight" in msg and "(64, 3, 8, 8)" in msg
    assert "(2048, 3, 8, 8)" in msg


@pytest.mark.parametrize("edit, field, detail", [
    (set_vision(num_hidden_layers=3), "vision_config.num_hidden_layers = 3", "has 2 such layers"),
    (set_vision(image_size=64), "vision_config.image_size = 64", "(17, 64)"),
    (set_vision(patch_size=16), "vision_config.patch_size = 16", "(64, 3, 8, 8)"),
    (lambda cfg: cfg["text_config"].update(max_position_embeddings=64), "text_config.max_position_embeddings = 64",
     "(77, 64)"),
])
def test_each_shape_field_is_checked_against_the_weights(tiny_hf, tmp_path, edit, field, detail):
    folder = with_config(tiny_hf, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        xe.load(str(folder))
    assert field in str(e.value) and detail in str(e.value) and "does not fit the weights" in str(e.value)


def test_cli_bad_config_exits_2_naming_file_and_field(tiny_hf, tmp_path):
    folder = with_config(tiny_hf, tmp_path, set_vision(patch_size=0))
    r = CliRunner().invoke(cli.main, ["infer", str(tmp_path / "v.mp4"), "--model", str(folder), "--labels", "a"])
    assert r.exit_code == 2 and str(folder / "config.json") in r.stderr and "vision_config.patch_size" in r.stderr, \
        r.output
    assert "Traceback" not in r.output


def test_our_format_validates_its_config(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "m.safetensors")
    save_model(XCLIP(TINY), path)
    assert xe.load(path).kind == "xclip-engine"
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["xclip_engine"])
    meta["config"]["patch_size"] = 0
    save_file(tensors, path, metadata={"xclip_engine": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"m.safetensors: config.patch_size is 0"):
        xe.load(path)
    meta["config"]["patch_size"] = 16
    save_file(tensors, path, metadata={"xclip_engine": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"m.safetensors: config.patch_size = 16 does not fit the weights"):
        xe.load(path)


def test_from_dict_and_validate():
    assert XCLIPConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError, match="here: unknown X-CLIP config fields"):
        XCLIPConfig.from_dict({"nope": 1}, "here")
    with pytest.raises(ConfigError, match="vision_heads is True"):
        TINY.replace(vision_heads=True).validate()
    with pytest.raises(ConfigError, match="prompt_heads = 3 does not divide embed_dim = 64"):
        TINY.replace(prompt_heads=3).validate()


# ---- permission denied is not a damaged file ----------------------------------------------------
def _deny(monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    # tests run as root here, where chmod 000 still reads: the readers' own `open` fails instead
    monkeypatch.setattr(files, "open", denied, raising=False)


def test_unreadable_checkpoint_says_permission_denied(tiny_hf, tmp_path, monkeypatch):
    path = str(tmp_path / "m.safetensors")
    save_model(XCLIP(TINY), path)
    torch.save({"model": {}}, tmp_path / "m.pth")
    _deny(monkeypatch)
    for source, named in [(path, path), (str(tmp_path / "m.pth"), str(tmp_path / "m.pth")),
                          (str(tiny_hf), str(tiny_hf / "config.json"))]:
        with pytest.raises(CheckpointError, match="permission denied.*check the file's permissions") as e:
            xe.load(source)
        assert named in str(e.value) and "complete" not in str(e.value) and "again" not in str(e.value)
    r = CliRunner().invoke(cli.main, ["infer", str(tmp_path / "v.mp4"), "--model", path, "--labels", "a"])
    assert r.exit_code == 2 and path in r.stderr and "permission denied" in r.stderr, r.output
