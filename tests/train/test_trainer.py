"""The reference trainer: a short run whose loss falls, evaluation (1x1, 4x3, zero-shot, few-shot),
and the pieces it is built from (config, optimizer groups, schedule, loss, augmentation, sampler)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import assert_close

import xclip_engine.engine.api as xe
from xclip_engine.engine.config import TINY
from xclip_engine.engine.model import XCLIP
from xclip_engine.train import optim
from xclip_engine.train.cli import eval_cmd
from xclip_engine.train.config import DataSection, load_run_config
from xclip_engine.train.data import (
    EpochSampler,
    few_shot_subset,
    read_labels,
    read_list,
    train_transform,
    tsn_train_indices,
)
from xclip_engine.train.evaluate import evaluate, few_shot
from xclip_engine.train.trainer import run, scratch_config

from .trainer_data import tiny_overrides, write_dataset, write_labels

NO_AUG = {"data.grayscale": 0, "data.color_jitter": 0, "data.flip": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """32 updates of batch 8 on 2 classes (8 clips, each listed 32 times: one epoch), constant lr 2e-3.

    A random-init X-CLIP sits near chance for ~15-25 updates (its two text features start almost
    equal) before it separates the classes; 32 updates leave room for that on any seed tried."""
    root = tmp_path_factory.mktemp("trainer")
    data = write_dataset(root, num_classes=2, per_class=4)
    with open(data["list"]) as f:
        lines = f.read()
    data["once"] = str(root / "once.txt")
    with open(data["once"], "w") as f:
        f.write(lines)
    with open(data["list"], "w") as f:
        f.write(lines * 32)
    out = root / "run"
    cfg = load_run_config(None, tiny_overrides(data, out, **NO_AUG, **{
        "train.batch_size": 8, "train.epochs": 1, "optim.lr": 2e-3, "optim.warmup_epochs": 0,
        "optim.min_lr_ratio": 1.0}))
    summary = run(cfg, quiet=True)
    return data, out, summary


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_loss_falls_and_writes_run_folder(trained):
    data, out, summary = trained
    rows = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 33))
    losses = [r["loss"] for r in rows]
    # from chance (ln 2 = 0.69 for 2 classes) to well below it
    assert np.mean(losses[-4:]) < 0.5 * losses[0] and min(losses[-4:]) < 0.2, f"loss did not fall: {losses}"
    assert all(r["clips_per_s"] > 0 and r["lr"] == pytest.approx(2e-3) for r in rows)
    resolved = load_run_config(str(out / "config.yaml"))        # the resolved config reads back
    assert resolved.train.out == str(out) and os.path.isabs(resolved.data.train_list)
    assert "loss" in (out / "train.log").read_text()
    # the exported model and the training checkpoint both load through the public API
    m = xe.load(str(out / "model"))
    assert m.labels == ["class 0", "class 1"] and m.kind == "xclip-engine"
    ck = xe.load(str(out / "last.pt"))
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, ck.net.state_dict()[k]), k


def test_eval_1x1_and_4x3_match_the_engine_api(trained):
    data, out, _ = trained
    samples = read_list(data["once"], 2)
    m = xe.load(str(out / "model"))
    for views in ("1x1", "4x3"):
        res = evaluate(str(out / "model"), data["once"], data["labels"], views=views, batch_size=3)
        preds = m.classify([s.path for s in samples], m.labels, topk=1, views=views, batch_size=3)
        expect = np.mean([p.top[0][0] == m.labels[s.label] for p, s in zip(preds, samples)])
        assert res["n"] == 8 and res["failed"] == 0 and res["views"] == views
        assert res["top1"] == pytest.approx(expect)
        assert res["top5"] == 1.0 and res["topk"] == 2      # only 2 classes: top-k is top-2
        assert res["unseen_labels"] == 0
    assert res["top1"] >= 0.75, "the trained model should classify its own training clips"


def test_zero_shot_on_another_label_set(trained, tmp_path):
    data, out, _ = trained
    # a new label set: the two known names in the other order plus one the model never saw
    labels = write_labels(tmp_path / "zs.csv", ["class 1", "unseen thing", "class 0"])
    remap = {0: 2, 1: 0}
    with open(data["once"]) as f:
        rows = [line.split() for line in f if line.strip()]
    zs_list = tmp_path / "zs.txt"
    zs_list.write_text("".join(f"{os.path.join(data['root'], p)} {remap[int(y)]}\n" for p, y in rows))
    res = evaluate(str(out / "model"), str(zs_list), labels, root="/")
    m = xe.load(str(out / "model"))
    names = ["class 1", "unseen thing", "class 0"]
    preds = m.classify([os.path.join(data["root"], p) for p, _ in rows], names, topk=1)
    expect = np.mean([p.top[0][0] == names[remap[int(y)]] for p, (_, y) in zip(preds, rows)])
    assert res["unseen_labels"] == 1 and res["num_classes"] == 3
    assert res["top1"] == pytest.approx(expect)


def test_few_shot_fine_tunes_on_k_per_class_then_evaluates(trained, tmp_path):
    data, out, _ = trained
    cfg = load_run_config(None, tiny_overrides(data, tmp_path / "fs", **NO_AUG, **{
        "train.epochs": 2, "optim.lr": 1e-4}))
    res = few_shot(str(out / "model"), data["once"], data["once"], data["labels"], k=1, cfg=cfg, quiet=True)
    sub = (tmp_path / "fs" / "few_shot_1_train.txt").read_text().split("\n")
    assert res["few_shot_k"] == 1 and res["train_clips"] == 2 and len([s for s in sub if s]) == 2
    assert res["train_steps"] == 2 and res["n"] == 8    # batch shrinks to the 2 clips: 1 update per epoch
    assert xe.load(str(tmp_path / "fs" / "model")).labels == ["class 0", "class 1"]


def test_eval_cli_writes_json(trained, tmp_path):
    data, out, _ = trained
    js = tmp_path / "res.json"
    r = CliRunner().invoke(eval_cmd, [str(out / "model"), "--list", data["once"], "--labels", data["labels"],
                                      "--workers", "0", "--json", str(js)])
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert res["mode"] == "supervised" and res["n"] == 8 and len(res["predictions"]) == 8
    assert f"top-1 {res['top1']:.2%}" in r.output


# ---- the pieces ---------------------------------------------------------------------------------
def test_config_file_overrides_and_coercion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-4\ntrain:\n  epochs: 3\nmodel:\n  config: {image_size: 64}\n")
    cfg = load_run_config(str(p), ["train.epochs=5", "model.config.patch_size=16", "data.crop_scales=[1, 0.5]"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)   # PyYAML alone reads 1e-4 as a string
    assert cfg.train.epochs == 5 and cfg.model.config == {"image_size": 64, "patch_size": 16}
    assert cfg.data.crop_scales == [1, 0.5]
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"train": {"batch_size": 2}}))
    assert load_run_config(str(j)).train.batch_size == 2


def test_optimizer_groups_follow_the_official_rules():
    model = XCLIP(TINY)
    opt = optim.build_optimizer(model, lr=1e-5, new_lr_mult=10, weight_decay=0.05)
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert len(by_name) == len(list(model.parameters()))
    assert by_name["visual.blocks.0.message_fc.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["mit.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["prompts_generator.layers.0.cross_attn.q.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["prompts_visual_proj"]["lr"] == pytest.approx(1e-4)
    assert by_name["visual.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-5)
    assert by_name["text.token_embedding.weight"]["lr"] == pytest.approx(1e-5)
    assert by_name["visual.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    for name in ("visual.blocks.0.attn.qkv.bias", "visual.ln_pre.weight", "visual.positional_embedding",
                 "mit.positional_embedding", "logit_scale", "prompts_generator.alpha"):
        assert by_name[name]["weight_decay"] == 0.0, name
    frozen = optim.freeze_text(model)
    assert frozen > 0 and not model.text.token_embedding.weight.requires_grad
    assert model.visual.conv1.weight.requires_grad and model.mit.positional_embedding.requires_grad
    assert all(not n.startswith("text.") for g in optim.param_groups(model, 1e-5, 10, 0.0) for n in g["names"])


def test_schedule_warms_up_then_follows_the_cosine():
    f = optim.WarmupCosine(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    for s in (10, 50, 99):
        assert f(s) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 100)))
    assert f(100) == pytest.approx(0.01)


def test_soft_target_loss_equals_torch_label_smoothing():
    logits = torch.randn(6, 5)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    for s in (0.0, 0.1):
        ours = optim.soft_cross_entropy_sum(logits, optim.soft_targets(y, 5, s)) / 6
        assert_close(ours, F.cross_entropy(logits, y, label_smoothing=s), rtol=1e-6, name=f"smoothing {s}")


def test_mixup_and_cutmix_mix_pixels_and_targets_alike():
    px = torch.randn(6, 2, 3, 8, 8)
    t = optim.soft_targets(torch.arange(6), 6, 0.0)     # clip i has class i: targets reveal the mixing
    for seed in range(4):
        mx, mt = optim.mix_batch(px, t, np.random.default_rng(seed), mixup=0.8, cutmix=0.0, switch_prob=0.5)
        assert_close(mt.sum(-1), torch.ones(6), name="mixup target sums")
        for i in range(6):   # row i = lam at i + (1 - lam) at its partner: the pixels must blend alike
            lam = float(mt[i, i])
            partner = i if lam > 1 - 1e-6 else int(torch.topk(mt[i], 2).indices[1 if mt[i].argmax() == i else 0])
            assert_close(mx[i], lam * px[i] + (1 - lam) * px[partner], rtol=1e-5, name=f"mixup clip {i}")
        cx, ct = optim.mix_batch(px, t, np.random.default_rng(seed), mixup=0.0, cutmix=1.0, switch_prob=0.5)
        for i in range(6):   # the pasted area is the share of the partner's class
            changed = float((cx[i] != px[i]).any(dim=(0, 1)).float().mean())
            assert changed == pytest.approx(1 - float(ct[i, i]), abs=1e-6), (seed, i)
            assert torch.equal((cx[i] != px[i]).any(dim=1), (cx[i] != px[i]).any(dim=1)[:1].expand(2, 8, 8))


def test_tsn_train_sampling_draws_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for n, t in ((30, 8), (8, 8), (5, 8), (100, 3)):
        for _ in range(5):
            idx = tsn_train_indices(n, t, rng)
            assert len(idx) == t and all(0 <= i < n for i in idx)
            if n >= t:
                avg = n // t
                assert all(k * avg <= i < (k + 1) * avg for k, i in enumerate(idx)), (n, t, idx)


def test_train_transform_shares_one_crop_flip_and_jitter_across_frames():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    aug = DataSection(flip=0.5, color_jitter=1.0, grayscale=0.0)
    outs = [train_transform([frame] * 4, 32, aug, np.random.default_rng(s)) for s in range(6)]
    for o in outs:
        assert o.shape == (4, 3, 32, 32) and o.dtype == np.float32
        for t in range(1, 4):   # identical frames stay identical: every choice is per clip
            np.testing.assert_array_equal(o[t], o[0])
    assert len({o.tobytes() for o in outs}) > 1, "different seeds should draw different augmentations"
    # the same seed gives the same clip (what makes resume and multi-process runs reproducible)
    np.testing.assert_array_equal(train_transform([frame] * 4, 32, aug, np.random.default_rng(3)), outs[3])


def test_epoch_sampler_splits_global_batches_across_processes():
    one = EpochSampler(20, batch_size=4, accumulation_steps=1, rank=0, world=1, seed=5)
    two = [EpochSampler(20, batch_size=2, accumulation_steps=1, rank=r, world=2, seed=5) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(3)
    a, b0, b1 = list(one), list(two[0]), list(two[1])
    assert one.updates_per_epoch == 5 and two[0].updates_per_epoch == 5
    for u in range(5):   # update u sees the same clips whether one process or two read them
        assert sorted(a[4 * u:4 * u + 4]) == sorted(b0[2 * u:2 * u + 2] + b1[2 * u:2 * u + 2])
    one.set_epoch(3, skip_updates=2)
    assert list(one) == a[8:] and len(one) == 12
    one.set_epoch(4)
    assert list(one) != a


def test_few_shot_subset_takes_k_per_class(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=3)
    samples = read_list(data["list"], 2)
    sub = few_shot_subset(samples, 2, seed=1)
    assert sorted(s.label for s in sub) == [0, 0, 1, 1]
    assert few_shot_subset(samples, 2, seed=1) == sub
    assert len(few_shot_subset(samples, 10)) == 6


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = XCLIP(TINY).train()
    px, ids = torch.randn(2, 4, 3, 32, 32), torch.randint(1, 1000, (3, 77))
    grads = []
    for gc in (False, True):
        model.zero_grad()
        model.visual.gradient_checkpointing = gc
        model(px, model.encode_text(ids)).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert_close(grads[1][n], grads[0][n], rtol=1e-5, name=n)


def test_bf16_amp_and_accumulation_run_on_cpu(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=2)
    cfg = load_run_config(None, tiny_overrides(data, tmp_path / "run", **{
        "train.amp": "bf16", "model.gradient_checkpointing": True, "train.batch_size": 1,
        "train.accumulation_steps": 2, "train.epochs": 1}))
    summary = run(cfg, quiet=True)
    assert summary["step"] == 2 and math.isfinite(summary["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_amp_with_grad_scaler_on_gpu(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=2)
    cfg = load_run_config(None, tiny_overrides(data, tmp_path / "run", **{
        "train.amp": "fp16", "train.device": "cuda", "train.batch_size": 2, "train.epochs": 2}))
    summary = run(cfg, quiet=True)
    assert summary["step"] == 4 and math.isfinite(summary["loss"])


def test_example_configs_parse():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "train", "configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert "shapes_small.yaml" in names
    for name in names:
        cfg = load_run_config(os.path.join(folder, name))
        if cfg.data.labels == "hmdb51":   # a bundled label set by name, kept as a name by resolved()
            assert cfg.resolved().data.labels == "hmdb51" and len(read_labels("hmdb51")) == 51
        if not cfg.model.source:   # a from-scratch config must give a valid architecture
            c = scratch_config(cfg)
            assert c.image_size % c.patch_size == 0 and c.num_frames >= 1


def test_freeze_text_trains_everything_but_the_text_tower(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=2)
    cfg = load_run_config(None, tiny_overrides(data, tmp_path / "run", **{
        "model.freeze_text": True, "train.batch_size": 2, "train.epochs": 1}))
    run(cfg, quiet=True)
    torch.manual_seed(cfg.train.seed)            # the trainer builds its from-scratch model from this seed
    init = XCLIP(scratch_config(cfg)).state_dict()
    after = xe.load(str(tmp_path / "run" / "model")).net.state_dict()
    for k, v in init.items():
        same = torch.equal(v, after[k])
        assert same == (k.startswith("text.") or k == "logit_scale"), k


def test_logit_scale_start_for_a_model_trained_from_scratch(tmp_path):
    from xclip_engine.train.config import ConfigError
    from xclip_engine.train.trainer import build_model

    data = write_dataset(tmp_path, num_classes=2, per_class=1)
    cfg = load_run_config(None, tiny_overrides(data, tmp_path / "run", **{"model.logit_scale": 100}))
    assert math.isclose(float(build_model(cfg.resolved(), None).logit_scale.detach().exp()), 100.0, rel_tol=1e-6)
    default = load_run_config(None, tiny_overrides(data, tmp_path / "run"))
    assert math.isclose(float(build_model(default.resolved(), None).logit_scale.detach().exp()), 1 / 0.07, rel_tol=1e-6)
    with pytest.raises(ConfigError, match="model.logit_scale"):
        load_run_config(None, tiny_overrides(data, tmp_path / "run", **{"model.logit_scale": 500}))
    with pytest.raises(ConfigError, match="model.logit_scale"):
        build_model(load_run_config(None, tiny_overrides(data, tmp_path / "run", **{
            "model.logit_scale": 50, "model.source": str(tmp_path / "some.pt")})).resolved(), None)


def test_frame_cache_gives_the_same_clips_and_the_same_run(tmp_path):
    data = write_dataset(tmp_path, num_classes=2, per_class=2)
    with open(os.path.join(tmp_path, "videos", "broken.mp4"), "wb") as f:
        f.write(b"not a video")
    with open(data["list"], "a", encoding="utf-8") as f:
        f.write("videos/broken.mp4 1\n")
    samples = read_list(data["list"], 2)
    from xclip_engine.train.data import ClipDataset

    aug = DataSection(flip=0.5, color_jitter=1.0, grayscale=0.5)
    plain = ClipDataset(samples, 4, 32, train=True, aug=aug, seed=3)
    cached = ClipDataset(samples, 4, 32, train=True, aug=aug, seed=3)
    assert cached.cache_frames(threads=2) == 4 * 8 * 48 * 48 * 3
    for key in [(0, 0), (1, 0), (0, 3), (2, 1)]:
        np.testing.assert_array_equal(cached[key]["pixels"].numpy(), plain[key]["pixels"].numpy())
    bad = cached[(0, 4)]   # the broken file is reported by path, as without the cache
    assert bad["pixels"] is None and bad["error"] and plain[(0, 4)]["pixels"] is None
    # a whole run with the cache ends on the same weights as one that decodes every epoch
    runs = {}
    for cache in (False, True):
        cfg = load_run_config(None, tiny_overrides(data, tmp_path / f"run{cache}", **{
            "data.cache": cache, "train.epochs": 2}))
        runs[cache] = run(cfg, quiet=True)
    assert runs[True]["step"] == runs[False]["step"] == 2
    a = torch.load(os.path.join(tmp_path / "runTrue", "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(tmp_path / "runFalse", "last.pt"), weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
