"""Parity set-up: run the Triton kernels in Triton's CPU interpreter when there is no GPU.

@triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when xclip_engine.kernels.<name>
is first imported; pytest imports this file before the test modules of this folder, so setting
the variable here is early enough. On a CUDA machine it is left alone and the kernels compile.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def kdevice() -> str:
    """Where kernel-test tensors live: the GPU when the kernels are compiled for it, else the CPU."""
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"


def _check_against_reference(name, out, op, *args):
    """The flash-attention rule of kernels/selfcheck.py `judge`, against the one reference op `op`
    (a ReferenceOps entry): `op` on float64 copies of `args` is the exact answer, `op` on `args`
    as given (same dtype as the kernel) the yardstick; the kernel's error may be 3x the yardstick's
    plus a per-dtype floor. Returns the exact answer."""
    from xclip_engine.kernels.selfcheck import float64_args, judge

    with torch.no_grad():
        exact, same = op(*float64_args(args)), op(*args)
    dtype = (out[0] if isinstance(out, (tuple, list)) else out).dtype
    bad = judge(out, exact, same, dtype)
    assert bad is None, f"{name}: {bad}"
    return exact


@pytest.fixture
def reference_rule():
    """check(name, kernel_output, reference_op, *inputs): the kernel against the upcast reference op."""
    return _check_against_reference


@pytest.fixture(autouse=True)
def _fresh_kernel_verdicts():
    """Each test starts with every kernel unchecked: a kernel one test switched off must not stay off."""
    from xclip_engine.kernels import selfcheck

    selfcheck.reset()
    yield
    selfcheck.reset()
