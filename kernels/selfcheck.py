"""The triton backend proves each kernel before trusting it, and switches off any that misbehave.

No GPU has run these kernels in CI, so a kernel that fails to compile on some GPU, raises at launch
or computes wrong numbers must not break or corrupt the model. Per kernel (one name per kernel
file, see KERNELS) this module keeps a process-wide verdict:

- "unchecked": not yet used on a GPU (or only under TRITON_INTERPRET, where the first-use check is
  skipped: the interpreter is slow and the parity tests cover it);
- "ok": its first use on a GPU ran the self-check (small inputs, fp32 and fp16) and it passed;
- "off: <reason>": the self-check failed, or a launch raised; the reference op answers every
  later call, and ONE warning named the kernel and the reason when it was switched off.

The error rule is flash attention's, as everywhere (engine/runtime/yardstick.py): against a float64
reference, the kernel's max error may be FACTOR times the same-dtype PyTorch reference's own max
error, plus a floor (FLOOR, relative to max|reference|; wider than the model-level floors because
the check's small inputs leave few terms per sum). Each kernel file supplies its check inputs as
`selfcheck_cases(dtype, device)`.
Nothing here imports triton or a kernel file at import time.
"""

from __future__ import annotations

import importlib
import threading
import warnings

import torch

from xclip_engine.engine.runtime.yardstick import rel_error

from .guards import DISABLE_ENV, interpreting

KERNELS = ("frame_attention", "message_attention", "layer_norm", "quick_gelu", "prompt_attention",
           "adjacent_attention")
CHECK_DTYPES = (torch.float32, torch.float16)
FACTOR = 3.0
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3}

_status: dict[str, str] = {}           # kernel -> "ok" | "off: reason"; absent = unchecked
_lock = threading.RLock()              # one self-check and one warning per kernel, even across threads


def kernel_status() -> dict[str, str]:
    """{kernel: "ok" | "off: reason" | "unchecked"} for every kernel of the backend (for `doctor`)."""
    with _lock:
        return {name: _status.get(name, "unchecked") for name in KERNELS}


def reset() -> None:
    """Forget every verdict (tests; a process otherwise keeps them for its lifetime)."""
    with _lock:
        _status.clear()


def is_off(name: str) -> bool:
    return _status.get(name, "").startswith("off")


def switch_off(name: str, reason: str) -> None:
    """Switch kernel `name` off for this process; warns the first time only."""
    _known(name)
    with _lock:
        if is_off(name):
            return
        _status[name] = f"off: {reason}"
    warnings.warn(f"xclip-engine: Triton kernel '{name}' switched off for this process, the reference op "
                  f"runs in its place: {reason} (set {DISABLE_ENV}=1 to run no kernel at all)",
                  RuntimeWarning, stacklevel=2)


def _known(name: str) -> None:
    if name not in KERNELS:
        raise ValueError(f"unknown Triton kernel {name!r}; the kernels are {', '.join(KERNELS)}")


def _tracing(t) -> bool:
    # torch.compile / torch.export trace with fake or functional tensor subclasses: the graph must
    # record the custom op itself, so neither run a self-check nor catch errors while tracing
    return torch.compiler.is_compiling() or type(t) not in (torch.Tensor, torch.nn.Parameter)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def dispatch(name: str, reason: str | None, like: torch.Tensor, fused, reference):
    """fused() where kernel `name` may run, else reference(); the one entry point of every kernel op.

    `reason` is the kernel's why_not (None: the inputs suit it), `like` an input tensor (its device
    picks where the self-check runs). A launch that raises switches the kernel off and the call is
    answered by reference(), so the model still gives the reference's answers.
    """
    if reason is not None or is_off(name):
        return reference()
    if _tracing(like):
        return fused()
    if name not in _status and _wants_check(like):
        _first_use_check(name, like.device)
        if is_off(name):
            return reference()
    try:
        return fused()
    except torch.OutOfMemoryError:
        raise                          # memory pressure, not a kernel defect: the reference needs memory too
    except Exception as e:             # compile errors, launch errors, anything from inside triton
        switch_off(name, f"launch raised {_one_line(e)}")
        return reference()


def _wants_check(like: torch.Tensor) -> bool:
    # compiled kernels on a GPU only: the interpreter's answers are the parity tests' business; and
    # not while a CUDA graph is being captured (the check synchronises), the next eager call checks
    if not like.is_cuda or interpreting():
        return False
    with torch.cuda.device(like.device):
        return not torch.cuda.is_current_stream_capturing()


def _first_use_check(name: str, device: torch.device) -> None:
    with _lock:
        if name in _status:            # another thread checked it meanwhile
            return
        bad = check_kernel(_module(name).selfcheck_cases, device)
        if bad is None:
            _status[name] = "ok"
    if bad is not None:
        switch_off(name, bad)


def _module(name: str):
    _known(name)
    return importlib.import_module(f"{__package__}.{name}")


def self_check(device=None, names=KERNELS) -> dict[str, str]:
    """Run the self-check of `names` now (a `doctor` command; on the CPU only under TRITON_INTERPRET).

    Kernels already switched off stay off; returns kernel_status().
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(f"the Triton self-check runs on a CUDA device, got {str(dev)!r}: pass a CUDA "
                           "device, or set TRITON_INTERPRET=1 (before importing xclip_engine.kernels) "
                           "to check the kernels in Triton's CPU interpreter")
    for name in names:
        if is_off(name):
            continue
        bad = check_kernel(_module(name).selfcheck_cases, dev)
        if bad is None:
            with _lock:
                _status[name] = "ok"
        else:
            switch_off(name, bad)
    return kernel_status()


def check_kernel(cases, device) -> str | None:
    """None if every case of `cases(dtype, device)` passes for fp32 and fp16, else why not.

    A case is (label, kernel, reference, args): kernel(*args) is judged against reference(*args)
    in float64, with reference(*args) in the input dtype as the yardstick.
    """
    for dtype in CHECK_DTYPES:
        dname = str(dtype).removeprefix("torch.")
        try:
            cases_now = cases(dtype, torch.device(device))
        except Exception as e:
            return f"self-check could not make its {dname} inputs: {_one_line(e)}"
        for label, kernel, reference, args in cases_now:
            try:
                with torch.no_grad():
                    out = kernel(*args)
                    if torch.device(device).type == "cuda":
                        torch.cuda.synchronize(device)   # a faulting kernel reports here, not later
                    exact = reference(*float64_args(args))
                    same = reference(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:
                return f"self-check {label} {dname} raised {_one_line(e)}"
            bad = judge(out, exact, same, dtype)
            if bad is not None:
                return f"self-check {label} {dname}: {bad}"
    return None


def float64_args(args) -> tuple:
    """`args` with every floating-point tensor in float64: the inputs of the exact reference run."""
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _outputs(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def judge(out, exact, same, dtype: torch.dtype) -> str | None:
    """None if `out` is as close to the float64 `exact` as FACTOR x `same`'s error + FLOOR, else why not.

    Errors are max |. - exact| over the elements, relative to max|exact|; out, exact and same are
    tensors or tuples of tensors (add_layer_norm returns two).
    """
    out, exact, same = _outputs(out), _outputs(exact), _outputs(same)
    if len(out) != len(exact):
        return f"{len(out)} outputs, the reference has {len(exact)}"
    for i, (o, e, s) in enumerate(zip(out, exact, same)):
        tag = f"output {i}" if len(out) > 1 else "output"
        if o.shape != e.shape or o.dtype != s.dtype:
            return f"{tag} {tuple(o.shape)} {o.dtype}, expected {tuple(e.shape)} {s.dtype}"
        if not torch.isfinite(o).all():
            return f"{tag} has NaN/inf"
        err, torch_err = rel_error(o, e), rel_error(s, e)
        bound = FACTOR * torch_err + FLOOR.get(dtype, 1e-2)
        if not err <= bound:
            return (f"{tag} error {err:.3g} > bound {bound:.3g} ({FACTOR:g} x PyTorch's own error "
                    f"{torch_err:.3g} + {FLOOR.get(dtype, 1e-2):g}, relative to max|reference|)")
    return None
