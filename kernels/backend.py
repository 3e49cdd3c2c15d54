"""The "triton" backend: an ops object for XCLIP.use_ops() whose entries call the fused Triton kernels.

    net.use_ops(triton_ops(device))      # what xe.load(..., backend="triton") does

Same contract as engine/model/ops.py ReferenceOps, entry by entry. Each entry checks its kernel's
guard (shape, dtype, device, autograd, XCLIP_DISABLE_TRITON) and runs the reference op where the
kernel does not apply, so the backend always computes the reference model. Each kernel also proves
itself on its first GPU use and is switched off (one warning, the reference op in its place) when
it fails that check or a launch raises: kernels/selfcheck.py; kernel_status() reports the verdicts.
Causal attention (the text tower) has no kernel here and runs the reference SDPA; non-causal
self-attention (the MIT) uses the prompt-attention kernel, which is a general non-causal attention.

The kernel modules are imported inside triton_ops(), not at import time: @triton.jit reads
TRITON_INTERPRET when a kernel is defined, so defining them late lets a process (a test) set the
variable first, and importing this module needs neither triton nor a GPU.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from .guards import DISABLE_ENV, disabled, interpreting
from .selfcheck import KERNELS, kernel_status, self_check

KERNEL_MODULES = KERNELS
__all__ = ["TritonOps", "TritonUnavailable", "kernel_status", "self_check", "triton_ops"]


class TritonUnavailable(NotImplementedError):
    """The triton backend cannot run here (no triton, no GPU, interpreter set too late)."""


class TritonOps:
    """Fused kernels where they apply, the reference op elsewhere (see each kernel's why_not)."""

    name = "triton"
    kernel_status = staticmethod(kernel_status)      # {kernel: "ok" | "off: reason" | "unchecked"}

    def __init__(self):
        from . import adjacent_attention, frame_attention, layer_norm, message_attention, prompt_attention, quick_gelu

        self._fa, self._ln, self._ma, self._pa, self._mlp, self._adj = (
            frame_attention, layer_norm, message_attention, prompt_attention, quick_gelu, adjacent_attention)

    @staticmethod
    def linear(x, weight, bias=None):
        return F.linear(x, weight, bias)       # cuBLAS: nothing to fuse into a plain projection

    def attention(self, q, k, v, causal: bool = False):
        if causal:
            from xclip_engine.engine.model.ops import REFERENCE

            return REFERENCE.attention(q, k, v, causal=True)
        return self._pa.prompt_attention(q, k, v)

    def frame_attention(self, q, k, v, k_msg, v_msg):
        return self._fa.frame_attention(q, k, v, k_msg, v_msg)

    def message_attention(self, msg, ln_w, ln_b, eps: float, qkv_w, qkv_b, out_w, out_b, heads: int):
        return self._ma.message_attention(msg, ln_w, ln_b, eps, qkv_w, qkv_b, out_w, out_b, heads)

    def prompt_attention(self, q, k, v):
        return self._pa.prompt_attention(q, k, v)

    def layer_norm(self, x, weight, bias, eps: float):
        return self._ln.layer_norm(x, weight, bias, eps)

    def add_layer_norm(self, x, delta, weight, bias, eps: float):
        return self._ln.add_layer_norm(x, delta, weight, bias, eps)

    def mlp(self, x, w1, b1, w2, b2):
        return self._mlp.mlp(x, w1, b1, w2, b2)

    def adjacent_frame_feature(self, q, k, w_prev, w_next, grid: int):
        # EVL's adjacent-frame attention feature (docs/model-evl.md §7)
        return self._adj.adjacent_frame_feature(q, k, w_prev, w_next, grid)


def _check_device(device) -> None:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if interpreting():
        return                            # the interpreter runs any device's tensors on the CPU
    if not torch.cuda.is_available():
        raise TritonUnavailable(
            "backend 'triton' needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False). "
            "Use backend='reference', or set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter "
            f"(about 1000x slower: for tests), or {DISABLE_ENV}=1 to run the reference ops under this backend.")
    if dev.type != "cuda":
        raise TritonUnavailable(
            f"backend 'triton' runs on a CUDA device, got device={str(dev)!r}: pass device='cuda' "
            "(or leave it unset), or use backend='reference' on the CPU.")


def _check_interpreter_mode() -> None:
    # A kernel defined before TRITON_INTERPRET was set (or after it was unset) would run in the
    # wrong mode: a compiled kernel on CPU tensors fails deep inside triton's driver.
    from triton.runtime.interpreter import InterpretedFunction

    want = interpreting()
    for name in KERNEL_MODULES:
        mod = importlib.import_module(f"{__package__}.{name}")
        kernels = [v for k, v in vars(mod).items() if k.endswith("_kernel")]
        if any(isinstance(kern, InterpretedFunction) != want for kern in kernels):
            now, then = ("set", "unset") if want else ("unset", "set")
            raise TritonUnavailable(
                f"TRITON_INTERPRET is {now} now, but xclip_engine.kernels.{name} was imported while it was {then}: "
                "set (or unset) TRITON_INTERPRET before the first import of xclip_engine.kernels, e.g. at the top "
                "of the script or in conftest.py.")


def triton_ops(device=None) -> TritonOps:
    """The ops object of the triton backend for a model on `device`; refuses where it cannot run.

    With XCLIP_DISABLE_TRITON=1 every entry runs the reference op and no GPU is needed.
    """
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise TritonUnavailable(f"backend 'triton' needs the triton package ({e}): pip install triton "
                                "(Linux), or use backend='reference'") from None
    if not disabled():                    # switched off, no kernel runs: nothing to check
        _check_device(device)
        _check_interpreter_mode()
    return TritonOps()
