"""kernels/adjacent_attention.py against the reference op (ReferenceOps.adjacent_frame_feature).

EVL's adjacent-frame attention feature (docs/model-evl.md §7). q/k are laid out as a backbone tap
would hand them over: head views [B, T, L, H, dh] of one [B, T, L, 2, H, dh] projection, so the
kernel's strided loads are tested. The reference op itself is checked against a plain-loop statement
of §7 on tiny sizes. Under the interpreter (no GPU) B x T x H stay small: one Python pass per program.
"""

import math

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import adjacent_attention as aa
from xclip_engine.kernels import selfcheck
from xclip_engine.kernels.backend import triton_ops

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 runs only compiled)")


def make_inputs(b, t, grid, h, dh, ch, dtype, device, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    seq = 1 + grid * grid
    qk = (scale * torch.randn(b, t, seq, 2 * h * dh, generator=gen)).to(device, dtype)
    q, k = qk.view(b, t, seq, 2, h, dh).unbind(3)                 # strided [B, T, L, H, dh] views
    rows = (2 * grid - 1) ** 2
    w_prev, w_next = (torch.randn(rows, ch, generator=gen).to(device, dtype) for _ in range(2))
    return q, k, w_prev, w_next, grid


def ids(s):
    return "b{}-t{}-g{}-h{}-dh{}-c{}".format(*s)


# ---- the reference op against a plain-loop statement of docs/model-evl.md §7 --------------------
def loop_feature(q, k, w_prev, w_next, grid):
    """§7 written out with Python loops over t, p, p', h (float64; tiny sizes only)."""
    b, t, seq, h, dh = q.shape
    out = torch.zeros(b, t, seq, w_prev.shape[1], dtype=torch.float64)
    q, k, w_prev, w_next = (x.double().cpu() for x in (q, k, w_prev, w_next))

    def idx(p, pk):
        (r, c), (rk, ck) = divmod(p, grid), divmod(pk, grid)
        return (r - rk + grid - 1) * (2 * grid - 1) + (c - ck + grid - 1)

    for n in range(b):
        for f in range(t):
            for fk, w in ((f - 1, w_prev), (f + 1, w_next)):
                if not 0 <= fk < t:
                    continue                                   # the missing neighbour adds nothing
                for p in range(grid * grid):
                    a = [0.0] * (grid * grid)
                    for head in range(h):
                        s = [float(q[n, f, 1 + p, head] @ k[n, fk, 1 + pk, head]) / math.sqrt(dh)
                             for pk in range(grid * grid)]
                        top = max(s)
                        e = [math.exp(x - top) for x in s]
                        for pk in range(grid * grid):
                            a[pk] += e[pk] / sum(e) / h
                    for pk in range(grid * grid):
                        out[n, f, 1 + p] += a[pk] * w[idx(p, pk)]
    return out


@pytest.mark.parametrize("shape", [(1, 3, 2, 2, 4, 5), (2, 2, 3, 1, 3, 2), (1, 1, 2, 2, 4, 3)], ids=ids)
def test_reference_op_matches_the_plain_loop_statement(shape):
    args = make_inputs(*shape, torch.float64, "cpu", scale=2.0)
    expected = loop_feature(*args)
    assert_close(REFERENCE.adjacent_frame_feature(*args), expected, rtol=1e-12, name=f"reference vs loops {shape}")


def test_kernel_matches_the_plain_loop_statement(kdevice):
    args = make_inputs(1, 3, 3, 2, 8, 6, torch.float32, kdevice, scale=2.0)
    assert aa.why_not(*args) is None
    assert_close(aa.adjacent_frame_feature(*args), loop_feature(*args), rtol=1e-5, name="kernel vs loops")


# ---- the kernel against the reference op --------------------------------------------------------
# (B, T, g, H, dh, C): g = 4 with T = 2, 4, 8; g = 14 (B/16's grid, P = 196, not a power of two) and
# g = 16 (L/14's); head dims 64 and small ones (8, 16, 24, 32: dh is summed in slices of 16, masked);
# C not a multiple of 64
FP32_SHAPES = [(2, 2, 4, 2, 64, 64), (1, 4, 4, 2, 64, 96), (1, 8, 4, 2, 16, 64), (2, 4, 4, 3, 8, 40),
               (1, 2, 4, 2, 24, 16), (1, 2, 14, 2, 64, 64), (1, 3, 14, 1, 32, 80), (1, 2, 16, 1, 64, 48)]


@pytest.mark.parametrize("shape", FP32_SHAPES, ids=ids)
def test_fp32_within_the_reference_rule(shape, kdevice, reference_rule):
    args = make_inputs(*shape, torch.float32, kdevice)
    assert aa.why_not(*args) is None
    out = aa.adjacent_frame_feature(*args)
    assert out.shape == (shape[0], shape[1], 1 + shape[2] ** 2, shape[5]) and out.dtype == torch.float32
    exact = reference_rule(f"adjacent_frame_feature fp32 {shape}", out, REFERENCE.adjacent_frame_feature, *args)
    assert_close(out, exact, rtol=1e-5, name=f"fp32 {shape} vs float64")


@pytest.mark.parametrize("shape", [(1, 4, 4, 2, 64, 64), (1, 2, 14, 2, 64, 64)], ids=ids)
def test_fp16_within_the_reference_rule(shape, kdevice, reference_rule):
    args = make_inputs(*shape, torch.float16, kdevice)
    out = aa.adjacent_frame_feature(*args)
    assert out.dtype == torch.float16
    reference_rule(f"adjacent_frame_feature fp16 {shape}", out, REFERENCE.adjacent_frame_feature, *args)


def test_large_scores_stay_finite(kdevice, reference_rule):
    # scores of several hundred: the softmax must subtract its row maximum
    args = make_inputs(1, 3, 4, 2, 64, 64, torch.float32, kdevice, scale=6.0)
    out = aa.adjacent_frame_feature(*args)
    reference_rule("adjacent_frame_feature large scores", out, REFERENCE.adjacent_frame_feature, *args)


@pytest.fixture
def nan_filled_outputs(monkeypatch):
    """Tensor.new_empty returns NaN-filled memory: an output element the kernel does not write shows."""
    def new_empty(self, *size, **kw):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return torch.full(size, float("nan"), dtype=kw.get("dtype", self.dtype), device=kw.get("device", self.device))

    monkeypatch.setattr(torch.Tensor, "new_empty", new_empty)


def test_one_frame_has_no_neighbours(kdevice, nan_filled_outputs):
    args = make_inputs(2, 1, 4, 2, 64, 64, torch.float32, kdevice)
    assert aa.why_not(*args) is None                     # the kernel runs, and writes zeros everywhere
    out = aa.adjacent_frame_feature(*args)
    assert out.shape == (2, 1, 17, 64) and torch.equal(out, torch.zeros_like(out))


def test_class_token_row_and_the_ends(kdevice, nan_filled_outputs):
    q, k, w_prev, w_next, grid = make_inputs(1, 4, 4, 2, 16, 64, torch.float32, kdevice)
    out = aa.adjacent_frame_feature(q, k, w_prev, w_next, grid)
    assert torch.isfinite(out).all()                                          # every element written
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))          # class-token row
    zero = torch.zeros_like(w_prev)
    only_prev = aa.adjacent_frame_feature(q, k, w_prev, zero, grid)         # frame 0 has no previous frame
    only_next = aa.adjacent_frame_feature(q, k, zero, w_next, grid)         # frame T-1 has no next frame
    assert torch.equal(only_prev[:, 0], torch.zeros_like(only_prev[:, 0]))
    assert torch.equal(only_next[:, -1], torch.zeros_like(only_next[:, -1]))
    assert only_prev[:, 1:, 1:].abs().amax() > 0 and only_next[:, :-1, 1:].abs().amax() > 0
    assert_close(only_prev + only_next, out, rtol=1e-6, name="the two neighbours add up")


def test_a_wrong_kernel_fails_the_rule(kdevice, reference_rule):
    # the rule can fail: a table perturbed by 1e-3 of one row, or the two tables swapped
    q, k, w_prev, w_next, grid = make_inputs(1, 3, 4, 2, 64, 64, torch.float32, kdevice)
    bumped = w_prev.clone()
    bumped[(2 * grid - 1) ** 2 // 2] *= 1.001           # the zero offset: every patch's own position
    for label, wrong in (("perturbed w_prev", aa.adjacent_frame_feature(q, k, bumped, w_next, grid)),
                         ("swapped tables", aa.adjacent_frame_feature(q, k, w_next, w_prev, grid))):
        with pytest.raises(AssertionError, match="error .* > bound"):
            reference_rule(label, wrong, REFERENCE.adjacent_frame_feature, q, k, w_prev, w_next, grid)


def test_guards_fall_back_to_the_reference(kdevice, monkeypatch):
    args = make_inputs(1, 3, 4, 2, 16, 24, torch.float32, kdevice)
    q, k, w_prev, w_next, grid = args
    assert "float64" in aa.why_not(*(a.double() for a in args[:4]), grid)
    assert "expected 1 + 3²" in aa.why_not(q, k, w_prev, w_next, 3)
    assert "tables" in aa.why_not(q, k, w_prev[:-1], w_next, grid)
    assert "q/k shapes" in aa.why_not(q, k[:, :2], w_prev, w_next, grid)
    assert "mixed dtypes" in aa.why_not(q, k, w_prev.half(), w_next, grid)
    big = make_inputs(1, 1, 17, 1, 8, 4, torch.float32, kdevice)
    assert "1 <= g <= 16" in aa.why_not(*big)
    assert "non-empty" in aa.why_not(*make_inputs(0, 2, 2, 1, 16, 4, torch.float32, kdevice))
    wide = torch.zeros(1, 1, device=kdevice).expand(49, 2**31 // 17 + 1)      # [49, C] with C * 17 >= 2^31
    assert "2^31 or more elements" in aa.why_not(q[:, :1, :, :1], k[:, :1, :, :1], wide, wide, grid)
    assert_close(aa.adjacent_frame_feature(*big), REFERENCE.adjacent_frame_feature(*big), rtol=0,
                 name="g=17 answered by the reference")
    grad_w = w_prev.clone().requires_grad_()
    assert "require grad" in aa.why_not(q, k, grad_w, w_next, grid)
    out = aa.adjacent_frame_feature(q, k, grad_w, w_next, grid)     # reference path keeps autograd working
    out.sum().backward()
    assert grad_w.grad is not None

    def boom(*a):
        raise AssertionError("the kernel ran although XCLIP_DISABLE_TRITON=1")

    monkeypatch.setenv("XCLIP_DISABLE_TRITON", "1")
    monkeypatch.setattr(aa, "adjacent_frame_feature_op", boom)
    assert "XCLIP_DISABLE_TRITON" in aa.why_not(*args)
    assert torch.equal(aa.adjacent_frame_feature(*args), REFERENCE.adjacent_frame_feature(*args))


def test_a_launch_that_raises_answers_with_the_reference(kdevice, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("simulated: gather not supported on this GPU")

    monkeypatch.setattr(aa, "_launch", broken)
    args = make_inputs(1, 3, 4, 2, 16, 24, torch.float32, kdevice)
    with pytest.warns(RuntimeWarning, match="'adjacent_attention' switched off.*gather not supported"):
        out = aa.adjacent_frame_feature(*args)
    assert torch.equal(out, REFERENCE.adjacent_frame_feature(*args))
    assert selfcheck.kernel_status()["adjacent_attention"].startswith("off: launch raised RuntimeError")


def test_huge_batches_go_on_axis_0():
    assert aa._grid(16 * 12 * 32, 8, 257) == (16 * 12 * 32 * 8, 17)


def test_backend_entry_runs_the_kernel(kdevice, monkeypatch):
    calls, real = [], aa.adjacent_frame_feature_op
    monkeypatch.setattr(aa, "adjacent_frame_feature_op", lambda *a: calls.append(1) or real(*a))
    args = make_inputs(1, 2, 4, 2, 16, 24, torch.float32, kdevice)
    out = triton_ops(kdevice).adjacent_frame_feature(*args)
    assert calls == [1]
    assert_close(out, REFERENCE.adjacent_frame_feature(*args), rtol=1e-5, name="TritonOps entry")


def test_fake_implementation_matches_the_kernel(kdevice):
    # torch.compile / torch.export trace the op through its fake: schema, shapes and strides must agree
    args = make_inputs(1, 2, 2, 2, 8, 8, torch.float32, kdevice)
    torch.library.opcheck(aa.adjacent_frame_feature_op, args, test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("shape", [(8, 8, 14, 12, 64, 768), (2, 8, 16, 16, 64, 1024)], ids=ids)
def test_bf16_and_full_size_on_gpu(shape, reference_rule):
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        args = make_inputs(*shape, dtype, "cuda")
        reference_rule(f"adjacent_frame_feature {dtype} {shape}", aa.adjacent_frame_feature(*args),
                       REFERENCE.adjacent_frame_feature, *args)
