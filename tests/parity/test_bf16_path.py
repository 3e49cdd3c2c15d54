"""The bf16 path of the reference backend (engine/runtime/bf16.py) against the fp32 reference.

Tolerances (docs/tolerances.md §6): max logit error under 5% of the logit range, top-1 equal to fp32 on the
bundled model's example clips, and top-1 agreement of at least 99% on 240 of its held-out test
clips. The text tower stays fp32, so text features are bit-identical.
"""

import copy
import glob
import os

import pytest
import torch

import xclip_engine as xe
from xclip_engine.engine.runtime.bf16 import to_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.mp4")))


def _logit_error(fast, ref) -> float:
    """max |fast - ref| as a fraction of the fp32 logits' range."""
    return float((fast.float() - ref).abs().max() / (ref.max() - ref.min()))


def test_tiny_model_logits_within_5_percent_and_same_top1(tiny_hf):
    ref, fast = xe.load(tiny_hf, device="cpu"), xe.load(tiny_hf, device="cpu", precision="bf16")
    c = ref.config
    x = torch.randn(4, c.num_frames, 3, c.image_size, c.image_size)
    labels = ["surfing", "eating spaghetti", "a dog barking", "juggling balls", "knitting"]
    t_ref, t_fast = ref.encode_text(labels), fast.encode_text(labels)
    assert torch.equal(t_ref, t_fast), "the text tower stays fp32 on the bf16 path"
    l_ref, l_fast = ref.logits(x, t_ref), fast.logits(x, t_fast)
    assert l_fast.dtype == torch.float32 and torch.isfinite(l_fast).all()
    err = _logit_error(l_fast, l_ref)
    print(f"tiny model: bf16 max logit error {err:.4f} of the range")
    assert err < 0.05
    assert torch.equal(l_fast.argmax(-1), l_ref.argmax(-1))
    v = fast.encode_video(x)
    assert v.dtype == torch.float32 and _logit_error(v, ref.encode_video(x)) < 0.05


def test_weights_cast_where_they_should_be(tiny_hf):
    net = xe.load(tiny_hf, device="cpu", precision="bf16").net
    assert net.precision == "bf16"
    block = net.visual.blocks[0]
    assert block.mlp.fc1.weight.dtype == torch.bfloat16 and net.visual.conv1.weight.dtype == torch.bfloat16
    assert net.prompts_visual_proj.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == torch.float32, "layer norm parameters stay fp32"
    assert net.mit.blocks[0].mlp.fc1.weight.dtype == torch.float32, "the MIT stays fp32"
    assert net.text.blocks[0].attn.qkv.weight.dtype == torch.float32, "the text tower stays fp32"
    assert net.logit_scale.dtype == torch.float32
    assert to_bf16(net) is net and len(net._bf16_hooks) == 4, "to_bf16 is idempotent"


def test_bundled_model_top1_on_example_clips():
    assert len(EXAMPLES) >= 6, "examples/*.mp4 are missing"
    ref, fast = xe.load(device="cpu"), xe.load(device="cpu", precision="bf16")
    x = torch.cat([torch.as_tensor(xe.read_video(p, num_frames=ref.num_frames, size=ref.image_size))
                   for p in EXAMPLES])
    text = ref.encode_text(ref.labels)
    l_ref, l_fast = ref.logits(x, text), fast.logits(x, text)
    err = _logit_error(l_fast, l_ref)
    print(f"bundled model, {len(EXAMPLES)} clips x {len(ref.labels)} labels: bf16 max logit error {err:.4f} "
          "of the range")
    assert torch.equal(l_fast.argmax(-1), l_ref.argmax(-1))
    assert err < 0.05


def test_bundled_model_top1_agreement_on_held_out_test_clips(shapes_test_clips):
    paths, _, names = shapes_test_clips
    top1 = {}
    for precision in ("fp32", "bf16"):
        m = xe.load(device="cpu", precision=precision)
        top1[precision] = [p.top[0][0] for p in m.classify(paths, names, topk=1, batch_size=16)]
    agree = sum(a == b for a, b in zip(top1["fp32"], top1["bf16"]))
    print(f"bundled model: bf16 top-1 agrees with fp32 on {agree}/{len(paths)} held-out clips")
    assert agree >= 0.99 * len(paths)


def test_random_init_b32_logit_error_under_5_percent():
    ref = xe.load("xclip-base-patch32", random_init=True, device="cpu")
    fast_net = to_bf16(copy.deepcopy(ref.net))           # the same random weights, cast
    x = torch.randn(1, 8, 3, 224, 224)
    text = ref.encode_text(xe.load_labels("k400")[:32])
    with torch.inference_mode():
        l_ref, l_fast = ref.net(x, text), fast_net(x, text)
    err = _logit_error(l_fast, l_ref)
    print(f"random-init B/32: bf16 max logit error {err:.4f} of the range")
    assert err < 0.05


def test_bad_precisions_are_refused(tiny_hf):
    with pytest.raises(ValueError, match="fp32 or bf16"):
        xe.load(tiny_hf, precision="fp16")
    with pytest.raises(ValueError, match="backend 'reference'"):
        xe.load(tiny_hf, backend="triton", precision="bf16")
    with pytest.raises(TypeError, match="reference XCLIP"):
        to_bf16(torch.nn.Linear(2, 2))
