"""When a fused Triton kernel may run, shared by every kernel file: the switch, the interpreter, the guards.

A guard returns None when the kernel can take the inputs, or a short reason when the caller must
use the reference op instead; the reason is what tests and `why_not` messages show. Nothing here
touches `triton.runtime.driver` (it raises on a machine without a GPU), and triton itself is
imported only inside the functions, so importing this module never needs triton or a GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch

DISABLE_ENV = "XCLIP_DISABLE_TRITON"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def disabled() -> bool:
    """XCLIP_DISABLE_TRITON=1 switches every kernel off (read at each call, so a test can flip it)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def interpreting() -> bool:
    """True when TRITON_INTERPRET is set: kernels run in Triton's numpy interpreter on the CPU."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# CUDA's grid limits: axis 0 takes up to 2^31 - 1 programs, axes 1 and 2 only 65535, so the
# launchers put the large (batch x heads) dimension on axis 0 and small tile counts on axis 1
GRID_MAX = (2**31 - 1, 65535, 65535)


def grid_reason(grid) -> str | None:
    """Why CUDA could not launch `grid` (a tuple of 1 to 3 program counts), or None if it can."""
    for axis, (n, cap) in enumerate(zip(grid, GRID_MAX)):
        if n > cap:
            return f"launch grid {tuple(grid)}: axis {axis} has {n} programs, CUDA allows at most {cap}"
    return None


def on_device(t: torch.Tensor):
    """The context a launch for tensor `t` runs in: its CUDA device made current, else nothing.

    Triton launches on the *current* CUDA device (and its current stream), not on the device of the
    pointers it is given: a model on cuda:1 launched from a thread whose current device is cuda:0
    would read cuda:1 memory from cuda:0. CPU tensors (the interpreter) need no device switch.
    """
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def dot_precision(dtype: torch.dtype) -> str:
    # tl.dot on fp32 defaults to TF32 on NVIDIA GPUs (10-bit mantissa): far outside the 1e-4
    # parity bound, so fp32 inputs ask for IEEE products; fp16/bf16 ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def common_reason(*tensors: torch.Tensor) -> str | None:
    """Why the kernels cannot take these tensors (dtype, device, autograd), or None if they can."""
    if disabled():
        return f"{DISABLE_ENV} is set"
    dtype = tensors[0].dtype
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype} (kernels take float32, float16, bfloat16)"
    if any(t.dtype != dtype for t in tensors):
        return f"mixed dtypes {sorted({str(t.dtype) for t in tensors})}"
    if any(t.untyped_storage().nbytes() // t.element_size() >= 2**31 for t in tensors):
        # the kernels index with 32-bit offsets (strides times program ids)
        return "a tensor of 2^31 or more elements"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "inputs require grad (the kernels have no backward; training uses the reference ops)"
    if interpreting():
        # docs/machines.md §3: the interpreter computes bf16 silently wrong, so bf16 stays on the GPU
        if dtype == torch.bfloat16:
            return "bfloat16 under TRITON_INTERPRET (the interpreter's bf16 is not exact)"
        return None
    if not all(t.is_cuda for t in tensors):
        return "tensors not on a CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    if len({t.device for t in tensors}) > 1:
        return "tensors on different devices"
    return None
