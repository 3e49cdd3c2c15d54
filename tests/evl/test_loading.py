"""EVL's two-file checkpoints: the official .pth with each backbone format, our format, and the errors."""

import os
import pickle
import zipfile

import pytest
import torch

import xclip_engine as xe
from xclip_engine.engine.checkpoint import CheckpointError, load_model, save_model
from xclip_engine.engine.checkpoint.backbone_formats import read_backbone
from xclip_engine.engine.checkpoint.format_evl import suggest_backbone

from .factory import (
    clip_root,
    random_official,
    reference_logits,
    write_official_pth,
    write_torchscript,
    write_transformers,
)

SHAPE = dict(width=64, layers=2, patch=8, grid=4)
ARCH = dict(**SHAPE, frames=4, decoder_layers=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evl-files")
    visual, decoder = random_official(classes=5, seed=3, **ARCH)
    torch.save(visual, d / "clip_state_dict.pt")                       # OpenAI's non-JIT state dict
    write_torchscript(d / "ViT-tiny.pt", visual, **SHAPE, half=False)   # OpenAI's release format
    write_transformers(d / "hf-clip", visual, **SHAPE)
    openclip = {"module." + k: v for k, v in visual.items()}
    openclip["module.token_embedding.weight"] = torch.zeros(10, 8)     # a text tower: not read
    torch.save({"epoch": 3, "name": "ViT-tiny", "state_dict": openclip, "optimizer": {}}, d / "open_clip.pt")
    from safetensors.torch import save_file

    save_file(visual, str(d / "open_clip_model.safetensors"))
    write_official_pth(d / "evl.pth", decoder)
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return dict(dir=d, visual=visual, decoder=decoder, x=x)


def _logits(loaded, x):
    with torch.no_grad():
        return loaded.model(x)


BACKBONES = ["clip_state_dict.pt", "ViT-tiny.pt", "hf-clip", "open_clip.pt", "open_clip_model.safetensors"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_format_gives_the_same_model(files, name):
    d, x = files["dir"], files["x"]
    loaded = load_model(d / "evl.pth", backbone=d / name)
    assert loaded.kind == "official" and loaded.meta["backbone"] == os.path.realpath(d / name)
    # the backbone computes what the source's own forward computes (OpenAI's module: every block's output)
    ref = clip_root(files["visual"], **SHAPE).visual
    frames = x[0]
    with torch.no_grad():
        want = ref(frames)
        taps = loaded.model.backbone(frames, 2)
    for (out, _, _), w in zip(taps, want[-2:]):
        torch.testing.assert_close(out, w, rtol=1e-5, atol=1e-5)
    # and the whole model what the loop-by-loop statement of EVL computes from the official files
    torch.testing.assert_close(_logits(loaded, x).double(), reference_logits(files["visual"], files["decoder"], x),
                               rtol=1e-4, atol=1e-5)


def test_formats_are_bit_identical_and_transformers_forward_agrees(files):
    d, x = files["dir"], files["x"]
    first = _logits(load_model(d / "evl.pth", backbone=d / BACKBONES[0]), x)
    for name in BACKBONES[1:]:
        assert torch.equal(_logits(load_model(d / "evl.pth", backbone=d / name), x), first), name
    from transformers import CLIPVisionModel

    hf = CLIPVisionModel.from_pretrained(str(d / "hf-clip")).eval()
    loaded = load_model(d / "evl.pth", backbone=d / "hf-clip")
    with torch.no_grad():
        hidden = hf(pixel_values=x[0], output_hidden_states=True).hidden_states
        taps = loaded.model.backbone(x[0], 2)
    torch.testing.assert_close(taps[-1][0], hidden[-1], rtol=1e-5, atol=1e-5)


def test_fp16_torchscript_archive_as_released(files, tmp_path):
    path = write_torchscript(tmp_path / "ViT-half.pt", files["visual"], **SHAPE, half=True)
    loaded = load_model(files["dir"] / "evl.pth", backbone=path)
    w = loaded.model.backbone.conv1.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, files["visual"]["visual.conv1.weight"].half().float())


def test_official_pth_variants(files, tmp_path):
    d, x = files["dir"], files["x"]
    want = _logits(load_model(d / "evl.pth", backbone=d / "ViT-tiny.pt"), x)
    for i, (prefix, wrap) in enumerate([("", True), ("", False), ("module.", False)]):
        p = write_official_pth(tmp_path / f"v{i}.pth", files["decoder"], prefix=prefix, wrap=wrap)
        assert torch.equal(_logits(load_model(p, backbone=d / "ViT-tiny.pt"), x), want)


def test_config_read_off_the_shapes(files):
    cfg = load_model(files["dir"] / "evl.pth", backbone=files["dir"] / "ViT-tiny.pt").model.config
    assert (cfg.width, cfg.layers, cfg.heads, cfg.patch_size, cfg.image_size) == (64, 2, 1, 8, 32)
    assert (cfg.num_frames, cfg.decoder_layers, cfg.decoder_heads, cfg.num_classes) == (4, 2, 1, 5)
    assert cfg.frame_stride == 16 and cfg.decoder_mlp_ratio == 4.0


def test_fine_tuned_pth_holds_its_own_backbone(files, tmp_path):
    # --finetune_backbone: the backbone is a registered module, in VisionTransformer2D's names
    v, c = files["visual"], 64
    sd = dict(files["decoder"])
    sd["backbone.cls_token"] = v["visual.class_embedding"]
    sd["backbone.pos_embed"] = v["visual.positional_embedding"]
    sd["backbone.patch_embed.proj.weight"] = v["visual.conv1.weight"].flatten(1)
    sd["backbone.patch_embed.proj.bias"] = torch.zeros(c)
    sd["backbone.ln_pre.weight"], sd["backbone.ln_pre.bias"] = v["visual.ln_pre.weight"], v["visual.ln_pre.bias"]
    for i in range(2):
        b, o = f"visual.transformer.resblocks.{i}", f"backbone.blocks.{i}"
        for j, p in enumerate("qkv"):
            sd[f"{o}.attn.{p}_proj.weight"] = v[f"{b}.attn.in_proj_weight"][j * c:(j + 1) * c]
            sd[f"{o}.attn.{p}_proj.bias"] = v[f"{b}.attn.in_proj_bias"][j * c:(j + 1) * c]
        for ours, theirs in (("attn.out_proj", "attn.out_proj"), ("norm1", "ln_1"), ("norm2", "ln_2"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            sd[f"{o}.{ours}.weight"], sd[f"{o}.{ours}.bias"] = v[f"{b}.{theirs}.weight"], v[f"{b}.{theirs}.bias"]
    p = write_official_pth(tmp_path / "ft.pth", sd)
    x = files["x"]
    want = _logits(load_model(files["dir"] / "evl.pth", backbone=files["dir"] / "clip_state_dict.pt"), x)
    assert torch.equal(_logits(load_model(p), x), want)
    with pytest.raises(CheckpointError, match="its own .*backbone.* not used"):
        load_model(p, backbone=files["dir"] / "ViT-tiny.pt")


def test_our_format_round_trip_without_backbone(files, tmp_path):
    d, x = files["dir"], files["x"]
    m = xe.load(d / "evl.pth", backbone=d / "ViT-tiny.pt")
    for path in (tmp_path / "evl-ours", tmp_path / "evl.safetensors"):
        save_model(m, str(path), labels=["a", "b", "c", "d", "e"])
        back = xe.load(path)
        assert back.family == "evl" and back.labels == ["a", "b", "c", "d", "e"] and back.backbone_origin is None
        assert torch.equal(back.logits(x), m.logits(x))
        with pytest.raises(CheckpointError, match="holds the whole model.*not used"):
            load_model(path, backbone=d / "ViT-tiny.pt")


# ---- errors --------------------------------------------------------------------------------------
def test_pth_without_backbone_says_what_to_pass(files):
    with pytest.raises(CheckpointError, match=r"decoder and head only: pass its CLIP backbone.*--backbone"):
        load_model(files["dir"] / "evl.pth")
    assert suggest_backbone(768, 14).startswith("ViT-B-16.pt") and suggest_backbone(1024, 16).startswith("ViT-L-14")


def test_backbone_with_an_xclip_model_is_refused(tiny_hf, files):
    with pytest.raises(CheckpointError, match="backbone .* is not used"):
        load_model(tiny_hf, backbone=files["dir"] / "ViT-tiny.pt")
    with pytest.raises(CheckpointError, match="X-CLIP model: the backbone .* is not used"):
        load_model("xclip-tiny-test", random_init=True, backbone=files["dir"] / "ViT-tiny.pt")


def test_backbone_of_another_size_is_refused(files, tmp_path):
    visual, _ = random_official(width=128, layers=1, patch=8, grid=4)
    torch.save(visual, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="backbone is 128 wide, the EVL decoder 64"):
        load_model(files["dir"] / "evl.pth", backbone=tmp_path / "wide.pt")
    visual, _ = random_official(width=64, layers=2, patch=4, grid=8)
    torch.save(visual, tmp_path / "grid8.pt")
    with pytest.raises(CheckpointError, match="8 x 8 patch grid.*4 x 4"):
        load_model(files["dir"] / "evl.pth", backbone=tmp_path / "grid8.pt")


def test_strict_load_names_missing_unexpected_and_misshapen_keys(files, tmp_path):
    d = dict(files["decoder"])
    del d["decoder.decoder_layers.1.norm3.weight"]
    d["decoder.extra_thing"] = torch.zeros(3)
    d["proj.2.bias"] = torch.zeros(6)
    p = write_official_pth(tmp_path / "bad.pth", d)
    with pytest.raises(CheckpointError) as e:
        load_model(p, backbone=files["dir"] / "clip_state_dict.pt")
    msg = str(e.value)
    assert "bad.pth does not fit" in msg
    assert "missing keys" in msg and "decoder.decoder_layers.1.norm3.weight" in msg
    assert "unexpected keys" in msg and "decoder.extra_thing" in msg
    assert "wrong shape" in msg and "proj.2.bias: (6,) in the file, (5,) expected for head.bias" in msg
    v = dict(files["visual"])
    del v["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    v["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)
    torch.save(v, tmp_path / "bad_clip.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(files["dir"] / "evl.pth", backbone=tmp_path / "bad_clip.pt")
    msg = str(e.value)
    assert "bad_clip.pt (the backbone) does not fit" in msg
    assert "visual.transformer.resblocks.1.mlp.c_fc.bias" in msg and "visual.transformer.resblocks.0.ls_1.gamma" in msg


def test_not_a_clip_backbone(files, tmp_path):
    torch.save({"foo": torch.zeros(2)}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a CLIP image tower"):
        load_model(files["dir"] / "evl.pth", backbone=tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(files["dir"] / "evl.pth", backbone=tmp_path / "absent.pt")


def test_torchscript_archive_as_the_model_is_refused(files):
    with pytest.raises(CheckpointError, match="TorchScript archive.*backbone="):
        load_model(files["dir"] / "ViT-tiny.pt")


# ---- the archive is read, never run ---------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_archive_pickle_asking_for_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"visual": _Evil(marker)}, protocol=2))
        z.writestr("evil/code/__torch__.py", "def forward(self): pass\n")
        z.writestr("evil/version", "3\n")
    with pytest.raises(CheckpointError, match=r"refusing to read it: its pickle asks for (posix|os|nt)\.system"):
        read_backbone(path)
    assert not marker.exists()


def test_archive_is_read_without_torch_jit_or_torch_load(files, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the archive must not be compiled or unpickled by torch")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    bb = read_backbone(files["dir"] / "ViT-tiny.pt")
    assert bb.kind == "OpenAI CLIP (TorchScript)" and (bb.width, bb.layers, bb.patch, bb.grid) == (64, 2, 8, 4)
    assert torch.equal(bb.tensors["visual.conv1.weight"], files["visual"]["visual.conv1.weight"])
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in bb.tensors


def test_transformers_backbone_with_gelu_is_refused(files, tmp_path):
    import json
    import shutil

    folder = tmp_path / "gelu"
    shutil.copytree(files["dir"] / "hf-clip", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hidden_act is 'gelu'.*quick_gelu"):
        load_model(files["dir"] / "evl.pth", backbone=folder)
