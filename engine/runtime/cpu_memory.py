"""Keep freed memory in the process, so that big CPU tensors do not page-fault on every forward.

    keep_freed_memory()     # the xclip-engine command calls it first thing; XCLIP_ENGINE_SYSTEM_MALLOC=1 skips it

Opt-in: the library (xe.load, Model, xe.infer) never calls it, since it changes malloc for the
whole process it runs in (a server's, a notebook's); a program of your own that runs CPU
inference in a loop can call it once at start, as the command line does.

Why: glibc's malloc serves every block over 32 MiB (the most M_MMAP_THRESHOLD can be) with a fresh
mmap and unmaps it on free, and trims the top of its heap back to the system. A B/32 forward at
batch 8 in fp32 allocates [3200, 3072] MLP activations of 39 MiB in each of 12 layers, so each
call page-faults ~1 GB of new zeroed memory; the first write to each page (inside the GEMM or the
bias copy before it) pays for it. Measured on our 2 cores, best of 3 forwards in fresh processes,
with and without this: B/32 fp32 batch 8 3.4-3.8 s against 3.7-4.1 s; B/16 fp32 batch 8 14.7 s
against 17-18 s; B/32 bf16 batch 32 5.7 s against 6.8-7.4 s (bf16 at batch 8 stays under 32 MiB
per tensor and gains nothing). ONNX Runtime has its own arena and never sees this.

What it costs: memory freed by the process stays mapped to it (its peak RSS does not fall back
until exit). For a process that runs inference in a loop the next call reuses it at once, which
is the point. It changes malloc for the whole process, so only the process's owner turns it on
(the command line does, unless the user opts out).
Intel's advice for PyTorch on CPUs (jemalloc or tcmalloc preloaded) solves the same problem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT_ENV = "XCLIP_ENGINE_SYSTEM_MALLOC"
# glibc malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_state: dict = {}


def keep_freed_memory() -> str:
    """Set glibc's malloc to serve big blocks from its heap and never trim it; once per process.

    Returns what was done, for logs and tests: "on", "off: <reason>"."""
    if "result" in _state:
        return _state["result"]
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        result = f"off: {OPT_OUT_ENV} is set"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        result = "off: not glibc (other allocators keep big blocks or have their own settings)"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            # mallopt returns 1 on success; its value is an int, so the trim threshold is at most
            # 2 GiB: the heap gives back only a free top of 2 GiB or more
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
            result = "on" if ok else "off: mallopt refused"
        except (OSError, AttributeError) as e:
            result = f"off: {e}"
    _state["result"] = result
    return result
