"""The "triton" backend end to end: the whole tiny model and one full-size B/32 block against the reference.

Same weights through `xe.load(..., backend="reference")` and `backend="triton"`; fp32 logits within
1e-4 relative (docs/tolerances.md §4), top-1 equal; every fused kernel must actually run (a backend
that silently fell back everywhere would pass a parity test, so the ops are counted).
"""

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_close
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine.checkpoint import save_model
from xclip_engine.engine.cli import main
from xclip_engine.engine.config import TINY
from xclip_engine.engine.model import XCLIP
from xclip_engine.engine.model.layers import init_linear
from xclip_engine.engine.model.vision import CrossFrameBlock
from xclip_engine.engine.runtime.yardstick import float64_copy
from xclip_engine.kernels import frame_attention, layer_norm, message_attention, prompt_attention, quick_gelu, selfcheck
from xclip_engine.kernels.backend import KERNEL_MODULES, TritonUnavailable, kernel_status, triton_ops

LABELS = ["cooking", "dancing", "surfing", "juggling balls", "riding a bike"]
OPS = [(frame_attention, "frame_attention_op"), (message_attention, "message_attention_op"),
       (prompt_attention, "prompt_attention_op"), (layer_norm, "layer_norm_op"), (layer_norm, "add_layer_norm_op"),
       (quick_gelu, "bias_quick_gelu_op")]


def perturb(module, seed=0):
    """Give layer norms and biases (initialised to 1 and 0) random values, so every term is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = perturb(XCLIP(TINY))
    return save_model(net, str(tmp_path_factory.mktemp("tiny") / "tiny"))


@pytest.fixture
def op_calls(monkeypatch):
    """Counts of each custom op's calls (the kernels' entry points), by op name."""
    calls = {name: 0 for _, name in OPS}
    for mod, name in OPS:
        real = getattr(mod, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(mod, name, counted)
    return calls


def test_tiny_model_logits_match_the_reference(tiny_ckpt, kdevice, op_calls):
    ref = xe.load(tiny_ckpt, device=kdevice)
    tri = xe.load(tiny_ckpt, backend="triton", device=kdevice)
    assert tri.net.ops.name == "triton" and tri.backend == "triton"
    pixels = torch.randn(2, TINY.num_frames, 3, TINY.image_size, TINY.image_size)
    expected = ref.logits(pixels, ref.encode_text(LABELS))
    got = tri.logits(pixels, tri.encode_text(LABELS))
    assert_close(got, expected, rtol=1e-4, name="tiny logits, triton vs reference")
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert all(n > 0 for n in op_calls.values()), op_calls     # every kernel ran


def test_tiny_model_still_matches_when_kernels_fail_to_launch(tiny_ckpt, kdevice, monkeypatch, op_calls):
    # a GPU where two kernels do not compile: each is switched off once, the reference op answers
    def broken(*args, **kwargs):
        raise RuntimeError("simulated: ptxas fatal, unsupported GPU architecture")

    monkeypatch.setattr(frame_attention, "_launch", broken)
    monkeypatch.setattr(layer_norm, "_launch", broken)
    ref = xe.load(tiny_ckpt, device=kdevice)
    tri = xe.load(tiny_ckpt, backend="triton", device=kdevice)
    pixels = torch.randn(2, TINY.num_frames, 3, TINY.image_size, TINY.image_size)
    expected = ref.logits(pixels, ref.encode_text(LABELS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [tri.logits(pixels, tri.encode_text(LABELS)) for _ in range(2)]
    warned = sorted(str(w.message).split("'")[1] for w in caught if "switched off" in str(w.message))
    assert warned == ["frame_attention", "layer_norm"]
    status = tri.net.ops.kernel_status()
    assert status == kernel_status() and set(status) == set(KERNEL_MODULES)
    assert {k for k, v in status.items() if v.startswith("off: ")} == {"frame_attention", "layer_norm"}
    assert "ptxas fatal" in status["frame_attention"]
    for g in got:
        assert_close(g, expected, rtol=1e-4, name="tiny logits with two kernels switched off")
        assert torch.equal(g.argmax(-1), expected.argmax(-1))
    # the broken kernels were tried at most once (on a GPU their first-use self-check fails first),
    # the working ones kept running
    assert op_calls["frame_attention_op"] <= 1 and op_calls["layer_norm_op"] + op_calls["add_layer_norm_op"] <= 1
    assert min(op_calls[n] for n in ("message_attention_op", "prompt_attention_op", "bias_quick_gelu_op")) > 1


@torch.no_grad()
def test_tiny_model_fp16(tiny_ckpt, kdevice, op_calls):
    net = xe.load(tiny_ckpt, device=kdevice).net
    ids = xe.load(tiny_ckpt).tokenizer(LABELS).to(kdevice)
    pixels = torch.randn(2, TINY.num_frames, 3, TINY.image_size, TINY.image_size, device=kdevice)
    ref32 = net(pixels, net.encode_text(ids))
    # the flash-attention rule on the whole model: the reference ops in float64 are the exact
    # answer, the reference ops in fp16 the yardstick
    net64 = float64_copy(net)
    exact = net64(pixels.double(), net64.encode_text(ids))
    net16 = net.half()
    torch16 = net16(pixels.half(), net16.encode_text(ids))
    net16.use_ops(triton_ops(kdevice))
    tri16 = net16(pixels.half(), net16.encode_text(ids))
    bad = selfcheck.judge(tri16, exact, torch16, torch.float16)
    assert bad is None, f"tiny logits fp16: {bad}"
    assert torch.equal(tri16.argmax(-1), ref32.argmax(-1))
    assert all(n > 0 for n in op_calls.values()), op_calls


@torch.no_grad()
def test_full_size_b32_block_matches_the_reference(kdevice, op_calls):
    # X-CLIP B/32: width 768, 12 heads, 50 tokens, 8 frames (one video)
    torch.manual_seed(0)
    block = CrossFrameBlock(768, 12, 1e-5)
    init_linear(block, std=0.02)
    block = perturb(block).to(kdevice).eval()
    x = torch.randn(8, 50, 768, device=kdevice)
    expected = block(x, 8)
    block.ops = block.message_ln.ops = block.ln_1.ops = block.ln_2.ops = block.mlp.ops = triton_ops(kdevice)
    got = block(x, 8)
    assert_close(got, expected, rtol=1e-4, name="B/32 block, triton vs reference")
    assert_close(got - x, expected - x, rtol=1e-4, name="B/32 block update (without the residual stream)")
    assert op_calls["frame_attention_op"] == 1 and op_calls["message_attention_op"] == 1
    assert op_calls["add_layer_norm_op"] == 1 and op_calls["bias_quick_gelu_op"] == 1


def test_disable_switch_runs_the_reference_everywhere(tiny_ckpt, monkeypatch, op_calls):
    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")      # no interpreter, no GPU needed when switched off
    ref = xe.load(tiny_ckpt, device="cpu")
    tri = xe.load(tiny_ckpt, backend="triton", device="cpu")
    pixels = torch.randn(1, TINY.num_frames, 3, TINY.image_size, TINY.image_size)
    assert torch.equal(tri.logits(pixels, tri.encode_text(LABELS)), ref.logits(pixels, ref.encode_text(LABELS)))
    assert sum(op_calls.values()) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_refuses_without_a_gpu_unless_interpreting(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(TritonUnavailable, match="needs a CUDA GPU.*TRITON_INTERPRET=1"):
        xe.load(tiny_ckpt, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checks device='cpu' is refused there)")
def test_refuses_a_cpu_device_on_a_gpu_machine(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(TritonUnavailable, match="runs on a CUDA device"):
        xe.load(tiny_ckpt, backend="triton", device="cpu")


def test_export_sees_the_custom_ops(kdevice):
    # torch.export traces through the ops' fake implementations: the fused ops appear in the graph
    torch.manual_seed(0)
    block = CrossFrameBlock(64, 2, 1e-5).to(kdevice).eval().requires_grad_(False)
    block.ops = block.message_ln.ops = block.ln_1.ops = block.ln_2.ops = block.mlp.ops = triton_ops(kdevice)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block(x, 4)

    graph = str(torch.export.export(Wrap(), (torch.randn(8, 5, 64, device=kdevice),)).graph)
    for op in ("xclip.frame_attention", "xclip.message_attention", "xclip.add_layer_norm", "xclip.bias_quick_gelu"):
        assert op in graph, op


def test_cli_backend_triton(tiny_ckpt, tmp_path, kdevice, monkeypatch):
    video = tmp_path / "clip.mp4"
    write_index_video(video, 8, codec="h264", size=(48, 40))
    args = ["infer", str(video), "--model", tiny_ckpt, "--labels", ", ".join(LABELS), "--format", "json",
            "--topk", "3", "--device", kdevice]
    runs = {b: CliRunner().invoke(main, args + ["--backend", b], catch_exceptions=False)
            for b in ("reference", "triton")}
    for b, r in runs.items():
        assert r.exit_code == 0, (b, r.output)
    ref, tri = (json.loads(runs[b].stdout) for b in ("reference", "triton"))
    assert [t["label"] for t in tri["top"]] == [t["label"] for t in ref["top"]]
    assert_close(torch.tensor([t["score"] for t in tri["top"]]), torch.tensor([t["score"] for t in ref["top"]]),
                 rtol=1e-4, atol=2e-6, name="CLI scores (rounded to 6 digits)")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        r = CliRunner().invoke(main, args + ["--backend", "triton"])
        assert r.exit_code == 2 and "needs a CUDA GPU" in r.stderr, r.output
