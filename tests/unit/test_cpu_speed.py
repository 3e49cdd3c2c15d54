"""The CPU speed-ups of the reference path change no arithmetic: in-place QuickGELU and malloc tuning."""

from __future__ import annotations

import platform

import pytest
import torch

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.engine.runtime import cpu_memory


def _mlp_pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    fc1, fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
    with torch.no_grad():
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return fc1, fc2, torch.randn(3, 5, 16, generator=g) * 3


def _weights(fc1, fc2):
    # the ops take tensors: what layers.MLP passes
    return fc1.weight, fc1.bias, fc2.weight, fc2.bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_quick_gelu_is_bitwise_the_formula(dtype, monkeypatch):
    fc1, fc2, x = _mlp_pair()
    fc1, fc2, x = fc1.to(dtype), fc2.to(dtype), x.to(dtype)
    x_before = x.clone()
    linear, seen = torch.nn.functional.linear, []

    def recording_linear(*args):
        out = linear(*args)
        seen.append(out)
        return out

    with torch.inference_mode():
        h = fc1(x)
        want = fc2(h * torch.sigmoid(1.702 * h))
        monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
        got = REFERENCE.mlp(x, *_weights(fc1, fc2))
        monkeypatch.undo()
    assert torch.equal(got, want)
    assert torch.equal(x, x_before), "the MLP must not write into its input"
    # the in-place form ran: fc1's own output now holds the activation (the speed-up depends on it)
    assert len(seen) == 2 and torch.equal(seen[0], h * torch.sigmoid(1.702 * h))


def test_training_mlp_keeps_the_graph():
    fc1, fc2, x = _mlp_pair(1)
    x.requires_grad_(True)
    out = REFERENCE.mlp(x, *_weights(fc1, fc2))
    out.square().sum().backward()
    # the same gradient as the out-of-place formula
    x2 = x.detach().clone().requires_grad_(True)
    h = fc1(x2)
    fc2(h * torch.sigmoid(1.702 * h)).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-6, atol=1e-6)
    assert fc1.weight.grad is not None and fc1.weight.grad.abs().sum() > 0


def test_keep_freed_memory_respects_the_opt_out(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.setenv(cpu_memory.OPT_OUT_ENV, "1")
    assert cpu_memory.keep_freed_memory() == f"off: {cpu_memory.OPT_OUT_ENV} is set"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_sets_glibc_once(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.delenv(cpu_memory.OPT_OUT_ENV, raising=False)
    assert cpu_memory.keep_freed_memory() == "on"
    # once per process: a second call reports the first result without calling mallopt again
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda *a: (_ for _ in ()).throw(OSError("called twice")))
    assert cpu_memory.keep_freed_memory() == "on"


def test_the_library_leaves_malloc_alone_and_the_cli_opts_in(tiny_hf, tmp_path, monkeypatch):
    # malloc tuning changes the whole process: xe.load and Model must not do it (a server or a
    # notebook owns its process); the xclip-engine command owns its own and turns it on
    from click.testing import CliRunner
    from video_factory import write_index_video

    import xclip_engine as xe
    from xclip_engine.engine.api import Model
    from xclip_engine.engine.cli import main

    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or "on")
    m = xe.load(tiny_hf, device="cpu")
    Model(m.net, m.tokenizer, device="cpu")
    assert calls == []
    clip = write_index_video(tmp_path / "a.mp4", 8, size=(32, 32))
    r = CliRunner().invoke(main, ["infer", str(clip), "--model", str(tiny_hf), "--labels", "a, b",
                                  "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert calls == [1]
