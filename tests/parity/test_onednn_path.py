"""backend "onednn": the reference arithmetic with its fp32 projections on oneDNN's GEMM
(engine/model/ops.py OneDnnOps), judged by the yardstick against float64: the op alone, and whole
models (tiny X-CLIP, tiny EVL, and a full-size B/32 layer's shapes); calls it does not take (bf16,
autograd) are F.linear's, bit for bit."""

import pytest
import torch
import torch.nn.functional as F

import xclip_engine as xe
from xclip_engine.engine.io.labels import load_labels
from xclip_engine.engine.model.ops import ONEDNN, REFERENCE, onednn_available
from xclip_engine.engine.runtime.yardstick import float64_copy, judge

pytestmark = pytest.mark.skipif(not onednn_available()[0], reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("shape", [(7, 64, 256), (3264, 768, 3072), (2, 50, 768, 2304)])
def test_linear_within_the_fp32_yardstick(shape):
    g = torch.Generator().manual_seed(0)
    *lead, k, n = shape
    x = torch.randn(*lead, k, generator=g)
    w, b = torch.randn(n, k, generator=g) * k ** -0.5, torch.randn(n, generator=g)
    exact = F.linear(x.double(), w.double(), b.double())
    v = judge(f"onednn linear {shape}", ONEDNN.linear(x, w, b), exact, REFERENCE.linear(x, w, b))
    print(v.row())
    assert v.ok, v.row()


def test_calls_it_does_not_take_are_f_linear_bit_for_bit():
    x, w = torch.randn(5, 32), torch.randn(16, 32)
    assert torch.equal(ONEDNN.linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))
    wg = w.clone().requires_grad_()
    y = ONEDNN.linear(x, wg)                       # training: autograd needs F.linear
    assert y.grad_fn is not None and torch.equal(y, F.linear(x, wg))


@pytest.mark.parametrize("which", ["xclip", "evl"])
def test_whole_model_within_the_fp32_yardstick(which, tiny_hf):
    src = str(tiny_hf) if which == "xclip" else "evl-tiny-test"
    kw = {} if which == "xclip" else {"random_init": True}
    ref = xe.load(src, backend="reference", device="cpu", **kw)
    fast = xe.load(src, backend="onednn", device="cpu", **kw)
    fast.net.load_state_dict(ref.net.state_dict())          # the same weights (EVL's random init is seeded anew)
    assert fast.net.ops is ONEDNN and fast.backend == "onednn"
    c = ref.config
    px = torch.randn(3, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(1))
    exact = float64_copy(ref.net)
    with torch.inference_mode():
        if which == "xclip":
            text = ref.encode_text(load_labels("k400")[:12])
            got, same, want = fast.net(px, text), ref.net(px, text), exact(px.double(), text.double())
        else:
            got, same, want = fast.net(px), ref.net(px), exact(px.double())
    v = judge(f"{which} logits", got, want, same, classes=True)
    print(v.row())
    assert v.ok, v.row()


def test_auto_measures_onednn_on_a_cpu(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    m = xe.load(str(tiny_hf), backend="auto", device="cpu")
    paths = {p.name: p for p in m.choice.paths}
    one = paths["onednn fp32"]
    assert one.available and one.verified and one.seconds > 0, m.choice.table()
    best = min((p for p in paths.values() if p.verified and p.seconds), key=lambda p: p.seconds)
    assert (m.backend, m.choice.precision) == (best.backend, best.precision)
