"""The reference trainer on EVL (train/evl.py): frozen backbone from an X-CLIP, decoder and head
trained on the class logits, save / load / eval, resume, config errors. Tiny and fast."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xclip_engine.engine.checkpoint import load_model, save_model
from xclip_engine.engine.config import CLIP_MEAN, CLIP_STD, IMAGE_MEAN, IMAGE_STD, TINY
from xclip_engine.engine.model import XCLIP
from xclip_engine.train import evl as evl_train
from xclip_engine.train.cli import eval_cmd, train_cmd
from xclip_engine.train.config import ConfigError, load_run_config
from xclip_engine.train.optim import build_optimizer, soft_cross_entropy_sum, soft_targets
from xclip_engine.train.trainer import build_model, run

from .trainer_data import tiny_overrides, write_dataset

# the EVL that the tiny X-CLIP's vision tower (32 px, patch 8, 64 wide, 2 layers, 2 heads) fits
EVL_CONFIG = "{image_size: 32, patch_size: 8, width: 64, layers: 2, heads: 2, num_frames: 4, frame_stride: 2, " \
             "decoder_layers: 2, decoder_heads: 2, decoder_dropout: 0.0}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evl")
    d = write_dataset(root, num_classes=2, per_class=4)          # 8 clips of 8 frames, 48 x 48
    torch.manual_seed(0)
    d["backbone"] = save_model(XCLIP(TINY), str(root / "xclip_tiny"), labels=["x", "y"])
    return d


def evl_overrides(data, out, **extra) -> list[str]:
    base = {"model.family": "evl", "model.arch": "evl-tiny-test", "model.config": EVL_CONFIG,
            "model.backbone": data["backbone"], "train.epochs": 2}
    base.update(extra)
    return tiny_overrides(data, out, **base)


def _config(data, out, **extra):
    return load_run_config(None, evl_overrides(data, out, **extra)).resolved()


def test_backbone_frozen_and_unchanged_decoder_trained(data, tmp_path):
    cfg = _config(data, tmp_path / "run")
    init = build_model(cfg, None, num_labels=2).state_dict()        # what the run starts from (seeded)
    summary = run(cfg, quiet=True)
    assert summary["step"] == 4
    after = load_model(summary["model_dir"]).model
    assert after.config.family == "evl" and after.config.num_classes == 2
    sd = after.state_dict()
    for k, v in init.items():
        if k.startswith("backbone."):
            assert torch.equal(v, sd[k]), f"{k} changed: the backbone must stay frozen"
    trained = [k for k in init if not k.startswith("backbone.") and not torch.equal(init[k], sd[k])]
    assert any(k.startswith("decoder.") for k in trained) and any(k.startswith("head.") for k in trained)
    # the optimizer holds exactly the decoder, temporal modules and head
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    n_opt = sum(len(g["params"]) for g in state["train"]["optimizer"]["param_groups"])
    assert n_opt == len(after.head_parameters()) == sum(1 for n, _ in after.named_parameters()
                                                        if not n.startswith("backbone."))
    assert state["family"] == "evl"


def test_backbone_gets_no_gradients_and_loss_goes_down(data, tmp_path):
    cfg = _config(data, tmp_path / "run")
    model = build_model(cfg, None, num_labels=2)
    evl_train.freeze_backbone(model)
    opt = build_optimizer(model, 3e-3, 1.0, 0.0)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.head_parameters()}
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 4, 3, 32, 32, generator=g)
    targets = soft_targets(torch.tensor([0, 1, 0, 1]), 2, 0.0)
    model.train()
    losses = []
    for step in range(25):
        loss = soft_cross_entropy_sum(model(pixels), targets) / 4
        loss.backward()
        if step == 0:
            assert all(p.grad is None for p in model.backbone.parameters())
            assert all(p.grad is not None for p in model.decoder.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_saved_model_round_trips_and_evaluates(data, tmp_path):
    out = tmp_path / "run"
    summary = run(load_run_config(None, evl_overrides(data, out, **{"data.val_list": data["list"]})), quiet=True)
    loaded = load_model(summary["model_dir"])
    assert loaded.labels == ["class 0", "class 1"]
    assert loaded.meta["preprocessing"]["family"] == "evl" and loaded.meta["preprocessing"]["stride"] == 2
    last = load_model(str(out / "last.pt"))          # the training checkpoint loads as an EVL too
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), last.model.eval()(x))
    assert os.path.isdir(out / "best")
    r = CliRunner().invoke(eval_cmd, [summary["model_dir"], "--list", data["list"], "--labels", data["labels"],
                                      "--workers", "0", "--views", "3x1"])
    assert r.exit_code == 0, r.output
    assert "top-1" in r.output and "on 8 videos (3x1 views)" in r.output
    # a labels file with a class the model does not have: EVL is closed-set
    other = tmp_path / "other.csv"
    other.write_text("id,name\n0,class 0\n1,something else\n")
    r = CliRunner().invoke(eval_cmd, [summary["model_dir"], "--list", data["list"], "--labels", str(other),
                                      "--workers", "0"])
    assert r.exit_code == 1 and "closed-set" in r.output


def test_resume_gives_the_same_weights_as_a_straight_run(data, tmp_path):
    extra = {"train.epochs": 3, "data.color_jitter": 0.8, "data.crop_scales": "[1.0, 0.75]"}
    run(load_run_config(None, evl_overrides(data, tmp_path / "straight", **extra, **{"train.stop_at_step": 4})),
        quiet=True)
    run(load_run_config(None, evl_overrides(data, tmp_path / "split", **extra, **{"train.stop_at_step": 3})),
        quiet=True)
    run(load_run_config(None, evl_overrides(data, tmp_path / "split", **extra, **{"train.stop_at_step": 4})),
        resume=str(tmp_path / "split"), quiet=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"


@pytest.mark.parametrize("extra, field", [
    ({"model.config": EVL_CONFIG.replace("width: 64", "width: 32")}, "model.config.width"),
    ({"model.config": EVL_CONFIG.replace("layers: 2, heads", "layers: 3, heads")}, "model.config.layers"),
    ({"model.config": EVL_CONFIG.replace("image_size: 32", "image_size: 40")}, "model.config.image_size"),
    ({"model.config": EVL_CONFIG.replace("{", "{num_classes: 5, ")}, "model.config.num_classes"),
    ({"model.freeze_text": True}, "model.freeze_text"),
    ({"model.backbone": "/no/such/checkpoint"}, "model.backbone"),
])
def test_bad_config_names_the_field(data, tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        run(load_run_config(None, evl_overrides(data, tmp_path / "run", **extra)), quiet=True)


def test_bad_config_from_the_cli_exits_2_naming_the_field(data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  seed: 1\n")
    args = [str(cfg), *evl_overrides(data, tmp_path / "run", **{"model.config": EVL_CONFIG.replace("width: 64",
                                                                                                   "width: 32")}), "-q"]
    r = CliRunner().invoke(train_cmd, args)
    assert r.exit_code == 2 and "model.config.width" in r.output and "has width 64" in r.output
    # EVL options on an X-CLIP run are refused too
    with pytest.raises(ConfigError, match="train.backbone_bf16"):
        run(load_run_config(None, tiny_overrides(data, tmp_path / "x", **{"train.backbone_bf16": True})), quiet=True)


def test_normalisation_fold_is_exact(data, tmp_path):
    model = build_model(_config(data, tmp_path / "a", **{"model.backbone_fold_norm": False}), None, 2)
    folded = build_model(_config(data, tmp_path / "b"), None, 2)
    x = torch.rand(3, 3, 32, 32)
    u = (x * 255 - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
    v = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    with torch.no_grad():
        for (a, qa, ka), (b, qb, kb) in zip(model.backbone(u, 2), folded.backbone(v, 2)):
            assert all(torch.allclose(s, t, atol=1e-4) for s, t in ((a, b), (qa, qb), (ka, kb)))


def test_bf16_backbone_keeps_fp32_weights_and_close_logits(data, tmp_path):
    model = build_model(_config(data, tmp_path / "a"), None, 2).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        evl_train.backbone_in_bf16(model)
        low = model(x)
        evl_train.backbone_in_bf16(model, False)
        assert torch.equal(model(x), ref)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.allclose(low, ref, atol=0.1), (low - ref).abs().max()
    summary = run(load_run_config(None, evl_overrides(data, tmp_path / "run", **{"train.backbone_bf16": True})),
                  quiet=True)
    assert summary["step"] == 4 and np.isfinite(summary["loss"])


def test_training_clip_start_covers_every_start():
    rng = np.random.default_rng(0)
    starts = {evl_train.train_start(24, 8, 3, rng)[0] for _ in range(200)}
    assert starts == {0, 1, 2}                                   # span 22 of 24 frames
    assert evl_train.train_start(5, 4, 2, rng) == [0, 2, 4, 4]   # shorter than the span: padded


def test_cached_taps_give_the_model_s_logits_and_train(data, tmp_path):
    model = build_model(_config(data, tmp_path / "a"), None, 2).eval()
    with torch.no_grad():
        for p in model.temporal.parameters():   # non-zero temporal terms, so that every tap counts
            p.normal_(0, 0.05)
        x = torch.randn(2, 4, 3, 32, 32)
        ref = model(x)
        assert torch.allclose(evl_train.logits_from_taps(model, evl_train.compute_taps(model, x, torch.float32)), ref,
                              atol=1e-5)
        assert torch.allclose(evl_train.logits_from_taps(model, evl_train.compute_taps(model, x)), ref, atol=1e-2)
    summary = run(load_run_config(None, evl_overrides(data, tmp_path / "run", **{
        "train.cache_taps": True, "data.val_list": data["list"]})), quiet=True)
    assert summary["step"] == 4 and np.isfinite(summary["loss"]) and summary["best"]["top1"] >= 0.5
    with pytest.raises(ConfigError, match="train.cache_taps"):
        load_run_config(None, evl_overrides(data, tmp_path / "run", **{"train.cache_taps": True, "train.mixup": 0.8}))


def test_backbone_from_a_clip_state_dict_in_openai_layout(data, tmp_path):
    # a CLIP image tower as OpenAI's state dict names it (visual.transformer.resblocks.N...), 64 wide
    # so 1 head by CLIP's rule, plus the text-tower and ln_post/proj keys EVL does not read
    cfg = _config(data, tmp_path / "a", **{"model.config": EVL_CONFIG.replace("heads: 2, num", "heads: 1, num"),
                                           "model.backbone": "null"})
    ref = build_model(cfg, None, 2).state_dict()
    sd = {"visual.ln_post.weight": torch.ones(64), "visual.ln_post.bias": torch.zeros(64),
          "visual.proj": torch.zeros(64, 32), "token_embedding.weight": torch.zeros(10, 32)}
    names = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias":
             "attn.in_proj_bias", "attn.out": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for k, v in ref.items():
        if not k.startswith("backbone."):
            continue
        rest = k.removeprefix("backbone.")
        if rest.startswith("blocks."):
            _, i, sub = rest.split(".", 2)
            for a, b in names.items():
                if sub.startswith(a):
                    sub = b + sub[len(a):]
                    break
            sd[f"visual.transformer.resblocks.{i}.{sub}"] = v + 1.0
        else:
            sd[f"visual.{rest}"] = v + 1.0
    torch.save(sd, tmp_path / "clip.pt")
    cfg = _config(data, tmp_path / "b", **{"model.config": EVL_CONFIG.replace("heads: 2, num", "heads: 1, num"),
                                           "model.backbone": str(tmp_path / "clip.pt")})
    model = build_model(cfg, None, 2).state_dict()
    for k, v in ref.items():
        if k.startswith("backbone."):
            assert torch.equal(model[k], v + 1.0), k        # CLIP statistics already: nothing folded
    with pytest.raises(ConfigError, match=r"model\.config\.heads"):   # 64 wide CLIP has 1 head, not 2
        build_model(_config(data, tmp_path / "c", **{"model.backbone": str(tmp_path / "clip.pt")}), None, 2)


def test_bundled_evl_demo_matches_its_registry_entry():
    from xclip_engine.engine.config import get_entry

    folder = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "assets", "evl_demo")
    if not os.path.isdir(folder):
        pytest.skip("engine/assets/evl_demo is not bundled")
    loaded = load_model(folder)
    entry = get_entry("evl-demo")
    assert loaded.model.config == entry.config and entry.family == "evl"
    assert len(loaded.labels) == 80 and loaded.meta["preprocessing"] == entry.preprocessing
    assert loaded.labels[0] == "a red circle moving left"
