"""kernels/selfcheck.py and the launch guards: grid limits, device guard, self-check, runtime fallback.

On a machine without a GPU the kernels run in Triton's interpreter, where the first-use self-check
is skipped (_wants_check is False); these tests switch it on by hand where they test its wiring.
"""

import contextlib
import importlib
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_close

from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.kernels import adjacent_attention as aa
from xclip_engine.kernels import frame_attention as fa
from xclip_engine.kernels import layer_norm as ln
from xclip_engine.kernels import message_attention as ma
from xclip_engine.kernels import prompt_attention as pa
from xclip_engine.kernels import quick_gelu as qg
from xclip_engine.kernels import selfcheck
from xclip_engine.kernels.guards import GRID_MAX, grid_reason, on_device
from xclip_engine.kernels.selfcheck import KERNELS, kernel_status, self_check


# ---- one call of each kernel's public op, and the reference op for the same inputs -------------
def _args(mod, device, case=0):
    return mod.selfcheck_cases(torch.float32, torch.device(device))[case][3]


def calls(name, device):
    """(fused(), reference()) for kernel `name`: the backend's entry point and the reference op."""
    if name == "frame_attention":
        a = _args(fa, device)
        return lambda: fa.frame_attention(*a), lambda: REFERENCE.frame_attention(*a)
    if name == "prompt_attention":
        a = _args(pa, device)
        return lambda: pa.prompt_attention(*a), lambda: REFERENCE.prompt_attention(*a)
    if name == "layer_norm":
        x, delta, w, b, eps = _args(ln, device, case=1)
        return ((lambda: (ln.layer_norm(x, w, b, eps), *ln.add_layer_norm(x, delta, w, b, eps))),
                lambda: (REFERENCE.layer_norm(x, w, b, eps), *REFERENCE.add_layer_norm(x, delta, w, b, eps)))
    if name == "quick_gelu":
        a = _args(qg, device)
        return lambda: qg.mlp(*a), lambda: REFERENCE.mlp(*a)
    if name == "adjacent_attention":
        a = _args(aa, device)
        return lambda: aa.adjacent_frame_feature(*a), lambda: REFERENCE.adjacent_frame_feature(*a)
    a = _args(ma, device)
    return lambda: ma.message_attention(*a), lambda: REFERENCE.message_attention(*a)


def _module(name):
    return importlib.import_module(f"xclip_engine.kernels.{name}")


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@contextlib.contextmanager
def switch_off_warnings():
    """The 'switched off' warnings raised inside the block (all of them: no once-per-location filter)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = []
        yield found
    found.extend(str(w.message) for w in caught if "switched off" in str(w.message))


# ---- 1. grid limits ----------------------------------------------------------------------------
def test_huge_batches_put_the_large_grid_dimension_on_axis_0():
    # batch 16 x 12 views x 32 frames, 12 heads: 73,728 (frame, head) pairs, past axis 1's 65535
    bt, h = 16 * 12 * 32, 12
    grids = {
        "frame_attention": (fa._grid(bt, h, 257), bt * h),
        "prompt_attention": (pa._grid(16 * 12 * 1000, 16, 400), 16 * 12 * 1000 * 16),
        "message_attention": (ma._grid(16 * 12 * 1000, 16), 16 * 12 * 1000),
        "layer_norm": (ln._grid(bt * 257, 1024), None),
        "quick_gelu": (qg._grid(2**31 - 1), None),
    }
    for name, (grid, axis0) in grids.items():
        assert grid_reason(grid) is None, name
        assert all(n <= 65535 for n in grid[1:]), (name, grid)
        assert axis0 is None or grid[0] == axis0, (name, grid)
    assert fa._grid(bt, h, 257)[1] == 5 and pa._grid(1, 1, 400) == (1, 7) and pa._grid(1, 1, 3) == (1, 1)


def test_a_grid_cuda_cannot_launch_is_refused_with_a_clear_reason(kdevice):
    assert GRID_MAX == (2**31 - 1, 65535, 65535)
    assert "axis 1 has 65536 programs, CUDA allows at most 65535" in grid_reason((1, 65536))
    assert "axis 0" in grid_reason((2**31, 1))
    # an expanded (stride 0) query of 5M rows: small storage, but 78,125 query tiles on axis 1
    q = torch.zeros(1, 1, 1, 64, device=kdevice).expand(1, 1, 5_000_000, 64)
    km = torch.zeros(1, 1, 1, 64, device=kdevice)
    assert "axis 1 has 78125 programs" in fa.why_not(q, q, q, km, km)
    assert "axis 1 has 78125 programs" in pa.why_not(q, q[:, :, :7], q[:, :, :7])


# ---- 2. device guard ---------------------------------------------------------------------------
def test_on_device_makes_the_tensors_gpu_current_and_is_a_no_op_on_the_cpu(monkeypatch):
    entered = []

    class FakeDeviceContext:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceContext)
    with on_device(SimpleNamespace(device=torch.device("cuda", 1))):
        pass
    assert entered == [torch.device("cuda", 1)]
    assert isinstance(on_device(torch.zeros(1)), contextlib.nullcontext)
    assert entered == [torch.device("cuda", 1)]


@torch.no_grad()
@pytest.mark.parametrize("name", KERNELS)
def test_every_launch_runs_under_the_device_guard(name, kdevice, monkeypatch):
    mod, current, launched = _module(name), [None], []
    real_guard = mod.on_device

    @contextlib.contextmanager
    def guard(t):                        # the real guard, remembering which device it made current
        with real_guard(t):
            current[0] = t.device
            yield
            current[0] = None

    class Spy:                           # the @triton.jit kernel, noting the device current at launch
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*a, **k):
                launched.append(current[0])
                return self.kernel[grid](*a, **k)
            return launch

    monkeypatch.setattr(mod, "on_device", guard)
    for attr in [k for k in vars(mod) if k.endswith("_kernel")]:
        monkeypatch.setattr(mod, attr, Spy(getattr(mod, attr)))
    fused, reference = calls(name, kdevice)
    for got, want in zip(_as_tuple(fused()), _as_tuple(reference())):
        assert_close(got, want, rtol=1e-4, name=name)
    assert launched and all(d is not None and d.type == torch.device(kdevice).type for d in launched), launched
    assert not kernel_status()[name].startswith("off"), kernel_status()


# ---- 3b. runtime fallback ----------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("name", KERNELS)
def test_a_launch_that_raises_switches_the_kernel_off_with_one_warning(name, kdevice, monkeypatch):
    launches = []

    def broken(*a, **k):
        launches.append(1)
        raise RuntimeError("simulated PTX compile failure\nsecond line")

    monkeypatch.setattr(_module(name), "_launch", broken)
    fused, reference = calls(name, kdevice)
    with switch_off_warnings() as warned:
        outs = [fused() for _ in range(3)]
    assert len(warned) == 1, warned
    assert f"Triton kernel '{name}'" in warned[0] and "simulated PTX compile failure" in warned[0]
    assert "second line" not in warned[0]
    assert len(launches) == 1, "a switched-off kernel must not be launched again"
    status = kernel_status()
    assert status[name].startswith("off: ") and "RuntimeError: simulated PTX compile failure" in status[name]
    assert all(not v.startswith("off") for k, v in status.items() if k != name), status
    for out in outs:                     # answered by the reference op, exactly
        for got, want in zip(_as_tuple(out), _as_tuple(reference())):
            assert torch.equal(got, want)


def test_out_of_memory_is_not_blamed_on_the_kernel(kdevice, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(fa, "_launch", oom)
    fused, _ = calls("frame_attention", kdevice)
    with pytest.raises(torch.OutOfMemoryError):
        fused()
    assert not kernel_status()["frame_attention"].startswith("off")


def test_each_kernel_is_checked_against_the_one_reference_op():
    # engine/model/ops.py ReferenceOps is the only definition of each op: no kernel file keeps a
    # reference of its own, and every self-check case is judged against the ReferenceOps entry it names
    for name in KERNELS:
        mod = _module(name)
        assert not [n for n in vars(mod) if n.endswith("_ref")], f"kernels/{name}.py defines its own reference"
        for label, _, reference, _ in mod.selfcheck_cases(torch.float32, torch.device("cpu")):
            assert reference == getattr(REFERENCE, label), f"{name}: case {label!r} is not judged by ReferenceOps"


def test_status_names_every_kernel_and_starts_unchecked():
    assert kernel_status() == dict.fromkeys(KERNELS, "unchecked")
    with pytest.raises(ValueError, match="unknown Triton kernel 'flash'"):
        selfcheck.switch_off("flash", "nope")


# ---- 3a. self-check ----------------------------------------------------------------------------
def test_the_real_kernels_pass_their_self_check(kdevice):
    assert self_check(kdevice) == dict.fromkeys(KERNELS, "ok")


def _noisy(ref, rel, only=None):
    """A fake launcher: the reference plus noise of `rel` x max|ref| (for dtype `only`, or always)."""
    def kernel(*a):
        out = ref(*a)
        if only is None or out.dtype == only:
            out = out + rel * out.abs().max() * torch.randn_like(out)
        return out
    return kernel


CHECK = "off: self-check frame_attention "


@pytest.mark.parametrize("fake, verdict", [
    (REFERENCE.frame_attention, "ok"),                                # PyTorch's own answer passes
    (_noisy(REFERENCE.frame_attention, 1e-6), "ok"),                  # within the fp32 floor
    (_noisy(REFERENCE.frame_attention, 0.05), CHECK + "float32: output error"),
    (_noisy(REFERENCE.frame_attention, 0.02, only=torch.float16), CHECK + "float16: output error"),
    (lambda *a: REFERENCE.frame_attention(*a) * float("nan"), CHECK + "float32: output has NaN/inf"),
    (lambda *a: REFERENCE.frame_attention(*a)[:, :1], CHECK + "float32: output (2, 1, 37, 64)"),
    (lambda *a: 1 / 0, CHECK + "float32 raised ZeroDivisionError"),
], ids=["reference", "tiny-noise", "noisy", "noisy-fp16-only", "nan", "wrong-shape", "raises"])
def test_self_check_verdicts_on_fake_kernels(fake, verdict, kdevice, monkeypatch):
    monkeypatch.setattr(fa, "_launch", fake)
    with switch_off_warnings() as warned:
        status = self_check(kdevice, names=("frame_attention",))
    assert status["frame_attention"].startswith(verdict), status["frame_attention"]
    assert len(warned) == (verdict != "ok")
    assert all("Triton kernel 'frame_attention' switched off" in w and verdict[5:] in w for w in warned)
    assert status["layer_norm"] == "unchecked"


def test_judge_allows_three_times_pytorchs_own_error_plus_a_floor():
    exact = torch.linspace(-2.0, 2.0, 101, dtype=torch.float64)          # max|exact| = 2
    sign = torch.where(torch.sin(37 * exact) >= 0, 1.0, -1.0).double()
    same = exact + 1e-3 * sign                 # PyTorch's error: 5e-4 relative; bound 3 x 5e-4 + 1e-3 = 2.5e-3
    assert selfcheck.judge(exact + 4e-3 * sign, exact, same, torch.float16) is None          # 2e-3 relative
    bad = selfcheck.judge(exact + 6e-3 * sign, exact, same, torch.float16)                   # 3e-3 relative
    assert bad is not None and "output error 0.003 > bound 0.0025" in bad and "3 x PyTorch's own error" in bad
    assert "output 1" in selfcheck.judge((same, exact + 6e-3), (exact, exact), (same, same), torch.float16)
    assert "2 outputs" in selfcheck.judge((same, same), exact, same, torch.float16)
    assert selfcheck.judge(exact + 4e-3 * sign, exact, same, torch.float32) is not None    # fp32 floor is 1e-5


@torch.no_grad()
def test_first_use_on_a_gpu_runs_the_self_check_once(kdevice, monkeypatch):
    # the interpreter skips the first-use check: pretend these tensors sit on a GPU
    monkeypatch.setattr(selfcheck, "_wants_check", lambda like: True)
    real_launch, launches = fa._launch, []
    monkeypatch.setattr(fa, "_launch", lambda *a: launches.append(1) or real_launch(*a))
    fused, reference = calls("frame_attention", kdevice)
    assert_close(fused(), reference(), rtol=1e-4, name="after the self-check")
    assert kernel_status()["frame_attention"] == "ok"
    checked = len(launches)
    assert checked == len(selfcheck.CHECK_DTYPES) + 1            # one check per dtype, then the call
    fused()
    assert len(launches) == checked + 1                           # checked once per process


@torch.no_grad()
def test_first_use_self_check_failure_answers_with_the_reference(kdevice, monkeypatch):
    monkeypatch.setattr(selfcheck, "_wants_check", lambda like: True)
    monkeypatch.setattr(fa, "_launch", _noisy(REFERENCE.frame_attention, 0.05))
    fused, reference = calls("frame_attention", kdevice)
    with switch_off_warnings() as warned:
        outs = [fused() for _ in range(3)]
    assert len(warned) == 1 and "frame_attention float32: output error" in warned[0]
    assert all(torch.equal(o, reference()) for o in outs)


def test_without_a_gpu_use_under_the_interpreter_leaves_kernels_unchecked(kdevice):
    fused, _ = calls("frame_attention", kdevice)
    with torch.no_grad():
        fused()
    q = _args(fa, kdevice)[0]
    assert kernel_status()["frame_attention"] == ("ok" if selfcheck._wants_check(q) else "unchecked")


def test_self_check_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(selfcheck, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="runs on a CUDA device, got 'cpu'.*TRITON_INTERPRET=1"):
        self_check("cpu")
