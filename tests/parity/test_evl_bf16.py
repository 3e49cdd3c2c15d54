"""The bf16 path on EVL (engine/runtime/bf16.py) against a float64 run of the reference, by the yardstick,
and backend auto on an EVL checkpoint.

What runs in bf16 (docs/model-evl.md §10, as the official evaluation runs the backbone in fp16): the
frozen backbone, LayerNorm weights and statistics fp32; its taps come back as fp32, and the decoder
and head run in fp32. The bound is the yardstick's (docs/tolerances.md §6): 4x the error of the same
model under torch.autocast(bf16) plus the bf16 floor, top-1 equal on clear rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from evl_factory import scaled_evl

import xclip_engine as xe
from xclip_engine.engine.checkpoint import save_model
from xclip_engine.engine.config import EVL_TINY, EVLConfig
from xclip_engine.engine.runtime import cache
from xclip_engine.engine.runtime.bf16 import to_bf16
from xclip_engine.engine.runtime.choice import choose_for_checkpoint
from xclip_engine.engine.runtime.yardstick import float64_copy, judge

# the real grid and head width (g = 14, dh = 64) with fewer and narrower layers, for a CPU test
B16_GRID = EVLConfig(image_size=224, patch_size=16, width=128, layers=3, heads=2, num_frames=4, decoder_layers=2,
                     decoder_heads=2, num_classes=40)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


def _judge_bf16(model, batch, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=g)
    fast = to_bf16(copy.deepcopy(model).eval())
    with torch.inference_mode():
        exact = float64_copy(model)(px.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            same = model(px).float()
        got = fast(px)
        features = fast.encode_video(px)
    assert got.dtype == torch.float32 and features.dtype == torch.float32
    return judge("bf16 logits", got, exact, same, "bf16", classes=True)


@pytest.mark.parametrize("config", [EVL_TINY, B16_GRID], ids=["tiny", "b16-grid"])
def test_bf16_logits_meet_the_yardstick(config):
    v = _judge_bf16(scaled_evl(config), batch=4)
    print(v.row())
    assert v.ok, v.row()
    assert v.top1[1] >= 1, "no clear row: the top-1 check judged nothing"


def test_backbone_in_bf16_decoder_and_head_in_fp32():
    net = to_bf16(scaled_evl(EVL_TINY))
    block = net.backbone.blocks[0]
    assert net.precision == "bf16"
    assert block.mlp.fc1.weight.dtype == torch.bfloat16 and block.attn.qkv.weight.dtype == torch.bfloat16
    assert net.backbone.conv1.weight.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == torch.float32 and net.backbone.ln_pre.weight.dtype == torch.float32
    for p in (net.temporal[0].w_prev, net.temporal[0].conv.weight, net.decoder[0].attn.q_proj.weight,
              net.head.weight, net.cls_token):
        assert p.dtype == torch.float32
    assert to_bf16(net) is net and len(net._bf16_hooks) == 2, "to_bf16 is idempotent"
    with pytest.raises(ValueError, match="eval"):
        to_bf16(scaled_evl(EVL_TINY).train())


def test_auto_on_an_evl_checkpoint_picks_a_verified_path(tmp_path):
    path = save_model(scaled_evl(EVL_TINY), str(tmp_path / "evl"))
    model = xe.load(path, device="cpu").net       # the checkpoint as the reference reads it
    choice, net = choose_for_checkpoint(model, "cpu", echo=None)
    paths = {p.name: p for p in choice.paths}
    for name in ("reference fp32", "reference bf16"):
        p = paths[name]
        if p.available:
            assert p.verified and p.seconds > 0 and p.error <= p.bound, p
    taken = paths[f"{choice.backend} {choice.precision}"]
    assert taken.verified and choice.backend == "reference"
    assert getattr(net, "precision", "fp32") == choice.precision
    # and through xe.load: the verdict is cached for this architecture, the chosen net classifies
    m = xe.load(path, backend="auto", device="cpu")
    assert m.choice.cached and (m.choice.backend, m.choice.precision) == (choice.backend, choice.precision)
    px = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        assert m.net(px).shape == (2, EVL_TINY.num_classes)


def test_doctor_on_an_evl_model(tmp_path):
    from xclip_engine.engine.doctor import diagnose, format_report

    path = save_model(scaled_evl(EVL_TINY), str(tmp_path / "evl"))
    report = diagnose(path, device="cpu")
    assert report["family"] == "evl"
    paths = {(p["backend"], p["precision"]): p for p in report["auto"]["paths"]}
    assert paths[("reference", "fp32")]["verified"]
    taken = paths[(report["auto"]["backend"], report["auto"]["precision"])]
    assert taken["available"] and taken["verified"]
    assert "xclip-engine export" in paths[("onnxruntime", "int8")]["why"]
    text = format_report(report)
    assert "EVL" in text and "<- takes" in text
    assert diagnose("evl-tiny-test", device="cpu")["kind"] == "random"   # a name with no weights: random init
