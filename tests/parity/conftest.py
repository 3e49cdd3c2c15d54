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


def _check_fp16(name, out16, ref32, torch16, atol=1e-3):
    """DESIGN.md section 6: |kernel - fp32 ref| <= 2 * |PyTorch fp16 - fp32 ref| + atol (max over elements)."""
    from helpers import assert_close

    torch_err = float((torch16.double() - ref32.double()).abs().max())
    return assert_close(out16, ref32, rtol=0.0, atol=2 * torch_err + atol,
                        name=f"{name} (torch fp16 err {torch_err:.3g})")


@pytest.fixture
def fp16_rule():
    """check(name, kernel_fp16, ref_fp32, torch_fp16): the fp16 tolerance rule as one call."""
    return _check_fp16


@pytest.fixture(autouse=True)
def _fresh_kernel_verdicts():
    """Each test starts with every kernel unchecked: a kernel one test switched off must not stay off."""
    from xclip_engine.kernels import selfcheck

    selfcheck.reset()
    yield
    selfcheck.reset()
