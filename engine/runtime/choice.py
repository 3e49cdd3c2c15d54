"""backend="auto": time every path this machine can run on a small real forward, verify each against
the reference, take the fastest verified one, and remember the verdict (cache.py).

    choice, net = choose_for_checkpoint(net, device)      # a loaded reference model
    choice = choose_for_export(folder, device)            # an export folder (export_choice.py)
    choice.backend, choice.precision, choice.note, choice.table()

Why measure: which path is fastest depends on the CPU, not on one flag. bf16 runs 3-4x the fp32
matmul rate on Intel AMX and on AMD EPYCs with avx512_bf16 alike; a rule keyed on `amx_bf16` left
2.6x on the table on such an AMD machine. And a path counts only when it computes the reference's
answers on this machine, so each candidate is judged by engine/runtime/yardstick.py on the same input:

- a checkpoint: the exact side is a float64 copy of the model; fp32 paths (the reference, its
  oneDNN-GEMM variant, Triton) are bounded by the fp32 reference's own error, the bf16 path by
  torch's bf16 autocast error of the same model. Candidates: reference fp32, onednn fp32 and
  reference bf16 on a CPU; reference fp32 and Triton on a GPU.
- an export folder: only precisions whose export check passed (manifest "checks"), each verified
  here against the folder's fp32 graph within the bound its export check recorded. fp32 and int8
  on a CPU; fp32, fp16 and the TensorRT engine on a GPU.

The calibration input is one batch of CALIBRATION_BATCH seeded videos of the model's real shape and
CALIBRATION_LABELS labels' worth of text features. EVL (closed set) has no text: its candidates are
called net(pixel_values), X-CLIP's net(pixel_values, text_features) (`net_args`).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from . import cache
from .yardstick import float64_copy, judge

CALIBRATION_BATCH = 1
CALIBRATION_LABELS = 8
TIMED_CALLS = 3


@dataclass
class PathResult:
    backend: str
    precision: str
    available: bool
    why: str = ""                   # why it cannot run here, or how it was verified
    verified: bool | None = None    # None: not measured
    error: float | None = None      # logits error on the calibration input (relative to the range)
    bound: float | None = None
    seconds: float | None = None    # per video, the fastest of the timed calls

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass
class Choice:
    backend: str
    precision: str
    note: str
    paths: list[PathResult] = field(default_factory=list)
    cached: bool = False
    calibration_s: float = 0.0
    cache_file: str | None = None

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "note": self.note,
                "paths": [asdict(p) for p in self.paths], "calibration_s": self.calibration_s}

    @classmethod
    def from_dict(cls, d: dict, cache_file: str | None = None) -> Choice:
        return cls(d["backend"], d["precision"], d.get("note", ""), [PathResult(**p) for p in d["paths"]],
                   cached=True, calibration_s=float(d.get("calibration_s", 0.0)), cache_file=cache_file)

    def table(self) -> str:
        """One line per path: available or why not, verified, error and bound, speed, and auto's pick."""
        head = ("path", "runs here", "verified", "error / bound", "s/video", "auto")
        rows, reasons = [], []
        for p in self.paths:
            err = "-" if p.error is None else f"{p.error:.1e} / {p.bound:.1e}"
            ver = "-" if p.verified is None else ("yes" if p.verified else "NO")
            runs = "yes"
            if p.why:
                reasons.append(f"  ({len(reasons) + 1}) {p.name}: {p.why}")
                runs = f"{'yes' if p.available else 'no'} ({len(reasons)})"
            rows.append((p.name, runs, ver, err, "-" if p.seconds is None else f"{p.seconds:.4f}",
                         "<- takes" if (p.backend, p.precision) == (self.backend, self.precision) else ""))
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        lines.insert(1, "-" * max(len(x) for x in lines))
        return "\n".join(lines + reasons)


def say(echo, msg: str) -> None:
    if echo is not None:
        echo(msg)


def stderr_echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- capabilities: module-level so tests can fake a machine -------------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def bf16_runs() -> tuple[bool, str]:
    """Whether this torch can run the bf16 path at all (speed is measured, not assumed)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        return False, "this torch build's oneDNN has no bf16 kernels for this CPU"
    return True, ""


def resolve_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if cuda_available() else "cpu")


# ---- a checkpoint ---------------------------------------------------------------------------------
def checkpoint_candidates(device: torch.device, precision: str | None = None) -> list[PathResult]:
    if precision in ("fp16", "int8"):
        raise ValueError(f"precision={precision!r} with a checkpoint: {precision} runs from an export folder "
                         f"(`xclip-engine export --model SOURCE --{precision} --out DIR`, then --model DIR); a "
                         "checkpoint runs in fp32, or bf16 on a CPU")
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"precision {precision!r} is not one of fp32, bf16 (checkpoint) or fp16, int8 (export folder)")
    gpu = device.type == "cuda"
    paths = [PathResult("reference", "fp32", True)]
    if gpu:
        have = module_available("triton")
        paths.append(PathResult("triton", "fp32", have, "" if have else "the triton package is not installed"))
        paths.append(PathResult("reference", "bf16", False, "the bf16 path is the CPU's (GPUs: triton or an "
                                "export folder's fp16 / TensorRT)"))
    else:
        from ..model.ops import onednn_available

        have, why = onednn_available()
        paths.append(PathResult("onednn", "fp32", have, why))
        runs, why = bf16_runs()
        paths.append(PathResult("reference", "bf16", runs, why))
        paths.append(PathResult("triton", "fp32", False, "needs a CUDA GPU"))
    if precision is not None:
        for p in paths:
            if p.precision != precision and p.available:
                p.available, p.why = False, f"precision {precision} asked for"
    return paths


def build_path(path: PathResult, net, device: torch.device):
    """The runnable net of a checkpoint path: the loaded reference itself for reference fp32, a
    copy cast to bf16, a copy on the Triton kernels, or one sharing its weights on oneDNN's GEMM."""
    if (path.backend, path.precision) == ("reference", "fp32"):
        return net
    if (path.backend, path.precision) == ("reference", "bf16"):
        from .bf16 import to_bf16

        return to_bf16(copy.deepcopy(net).eval())
    if path.backend == "onednn":
        from ..model.ops import ONEDNN

        # the same weights (shared, not copied: fp32 either way), its own modules to set the ops on
        shared = {id(t): t for t in [*net.parameters(), *net.buffers()]}
        return copy.deepcopy(net, memo=shared).use_ops(ONEDNN)
    if path.backend == "triton":
        from xclip_engine.kernels.backend import triton_ops

        return copy.deepcopy(net).use_ops(triton_ops(device))
    raise ValueError(f"no checkpoint path {path.name}")


def time_call(fn, *args, calls: int = TIMED_CALLS, min_seconds: float = 0.2, max_calls: int = 50) -> float:
    """The fastest of at least `calls` calls of fn(*args), in seconds, calling on (up to `max_calls`)
    until `min_seconds` have passed, so that a small model's millisecond calls are not decided by one
    hiccup. The minimum, not the median: other work on the machine only ever adds time, and it must
    not decide between two paths. (The caller has made one call already: the warm-up, whose output
    it verified.)"""
    times: list[float] = []
    while len(times) < calls or (sum(times) < min_seconds and len(times) < max_calls):
        t0 = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def needs_text(net) -> bool:
    """Whether `net` (a model, or a runtime with .config) scores videos against text features
    (X-CLIP) or on its own (EVL, a closed-set classifier)."""
    return getattr(net.config, "family", "xclip") != "evl"


def net_args(net, px, ids) -> tuple:
    """The arguments of one scoring call of `net`: (px, text features of ids) for X-CLIP, (px,) for EVL."""
    return (px, net.encode_text(ids)) if needs_text(net) else (px,)


def calibration_input(config, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(CALIBRATION_BATCH, config.num_frames, 3, config.image_size, config.image_size, generator=g)
    if getattr(config, "family", "xclip") == "evl":
        return px.to(device), None          # a closed-set classifier: no text
    ids = torch.full((CALIBRATION_LABELS, config.context_length), 0, dtype=torch.long)
    # SOT, a few word ids, EOT: real token structure without needing a tokenizer
    for i in range(CALIBRATION_LABELS):
        words = torch.randint(1, 49400, (2 + i % 5,), generator=g)
        ids[i, 0], ids[i, 1:1 + len(words)], ids[i, 1 + len(words)] = 49406, words, 49407
    return px.to(device), ids.to(device)


@torch.inference_mode()
def measure_checkpoint(net, device: torch.device, paths: list[PathResult], echo=stderr_echo,
                       built: dict | None = None) -> list[PathResult]:
    """Verify and time every available path of a checkpoint on the calibration input; the nets
    it builds are left in `built` (path name -> net), so the winner is not built twice."""
    px, ids = calibration_input(net.config, device)
    exact = float64_copy(net)
    logits64 = exact(*net_args(exact, px.double(), ids)).cpu()
    del exact
    args = net_args(net, px, ids)           # (px, text) for X-CLIP, (px,) for EVL
    logits32 = net(*args).float().cpu()
    for p in paths:
        if not p.available:
            continue
        try:
            runnable = build_path(p, net, device)
            if built is not None:
                built[p.name] = runnable
            got = logits32 if runnable is net else runnable(*args).float().cpu()   # also the warm-up
            if p.precision == "bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    same = net(*args).float().cpu()
            else:
                same = logits32
            v = judge(f"{p.name} logits", got, logits64, same, p.precision, classes=True)
            p.verified, p.error, p.bound = v.ok, v.error, v.bound
            p.why = "" if v.ok else f"disagrees with the reference: {v.why}"
            p.seconds = time_call(runnable, *args) / CALIBRATION_BATCH
        except Exception as e:   # a path that cannot even run here is reported, never chosen
            p.available, p.verified, p.why = False, False, f"failed to run: {type(e).__name__}: {e}"
        say(echo, f"auto:   {p.name}: " + (f"{p.seconds:.3f} s/video, error {p.error:.1e} (bound {p.bound:.1e}), "
                                             + ("verified" if p.verified else "NOT verified")
                                             if p.seconds is not None else p.why))
    return paths


def pick(paths: list[PathResult]) -> PathResult:
    """The fastest verified path; the reference fp32 path when nothing was measured."""
    ok = [p for p in paths if p.available and p.verified and p.seconds is not None]
    if ok:
        return min(ok, key=lambda p: p.seconds)
    ref = [p for p in paths if p.available and p.backend in ("reference", "onnxruntime") and p.precision == "fp32"]
    if ref:
        return ref[0]
    raise RuntimeError("backend auto: no path both runs here and passed its check:\n"
                       + Choice("-", "-", "", paths).table())


def _note(best: PathResult, paths: list[PathResult], cached: bool) -> str:
    measured = [p for p in paths if p.seconds is not None and p is not best]
    against = ", ".join(f"{p.name} {p.seconds / best.seconds:.2f}x slower"
                        + ("" if p.verified else " and not verified") for p in measured)
    how = "measured on this machine" + (" (cached verdict)" if cached else "")
    return f"auto: {best.name}, the fastest verified path {how}" + (f"; {against}" if against else "")


def decide(fp: dict, measure, paths: list[PathResult], echo, what: str, fresh: bool = False) -> Choice:
    stored = None if fresh else cache.read_verdict(fp)
    if stored is not None:
        try:
            choice = Choice.from_dict(stored, cache.cache_path())
            choice.note = _note(next(p for p in choice.paths if (p.backend, p.precision) ==
                                     (choice.backend, choice.precision)), choice.paths, True)
            return choice
        except (TypeError, KeyError, ValueError, StopIteration, ZeroDivisionError):
            pass   # a damaged entry: measure again and overwrite it
    runnable = [p for p in paths if p.available]
    t0 = time.perf_counter()
    if len(runnable) > 1:
        say(echo, f"auto: first use of {what} on this machine: timing and verifying "
                   f"{', '.join(p.name for p in runnable)} (once; the verdict is kept in {cache.cache_path()})")
        paths = measure(paths)
    best = pick(paths)
    choice = Choice(best.backend, best.precision, _note(best, paths, False) if best.seconds else
                    f"auto: {best.name}, the only path that runs here", paths,
                    calibration_s=round(time.perf_counter() - t0, 3))
    if len(runnable) > 1:
        choice.cache_file = cache.write_verdict(fp, choice.to_dict())
        say(echo, f"{choice.note} (calibration {choice.calibration_s:.1f} s)")
    return choice


def choose_for_checkpoint(net, device=None, precision: str | None = None, echo=stderr_echo, fresh: bool = False):
    """(Choice, the net to run): `net` is a loaded reference XCLIP or EVL on `device`; the returned net is
    it, or a prepared copy (bf16, Triton) when that path won. `fresh`: measure even when a verdict
    is cached (and replace it)."""
    dev = resolve_device(device)
    paths = checkpoint_candidates(dev, precision)
    net = net.to(dev).eval()
    # the candidates are in the key: a verdict measured before a path existed is measured again
    fp = cache.fingerprint(dev, {"family": net.config.family, "config": net.config.to_dict(), "precision": precision,
                                 "candidates": [p.name for p in paths]})
    built: dict = {}
    cfg = net.config
    width = getattr(cfg, "vision_width", None) or cfg.width        # X-CLIP's vision tower, EVL's backbone
    choice = decide(fp, lambda ps: measure_checkpoint(net, dev, ps, echo, built), paths, echo,
                    f"this {cfg.family} architecture ({cfg.num_frames} frames, width {width})", fresh)
    best = next(p for p in choice.paths if (p.backend, p.precision) == (choice.backend, choice.precision))
    return choice, built[best.name] if best.name in built else build_path(best, net, dev)


def is_export_folder(source) -> bool:
    return source is not None and os.path.isfile(os.path.join(os.fspath(source), "manifest.json"))


__all__ = ["Choice", "PathResult", "choose_for_checkpoint", "is_export_folder", "pick"]
