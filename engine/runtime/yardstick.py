"""Judging a fast path against the reference: error measured against float64, bounded by the
reference's own error in the same precision (the rule of the flash-attention tests).

    v = judge("logits", fast, exact=ref64, same_dtype=ref32, precision="fp32")
    v.ok, v.error, v.bound, v.row()

Why not a fixed tolerance: two correct fp32 computations of a full-size model (ours and ONNX
Runtime's, or ours on two CPUs whose GEMMs sum in another order) differ by 1e-5..1e-4 of the
logits' range, and by how much depends on the machine. A fixed 1e-4 between them failed a correct
B/32 export on an AMD CPU. Against a float64 run of the same weights, a correct fast path errs about
as much as the reference's own fp32 (or fp16, bf16) run; a wrong one (a swapped weight, a dropped
token) errs by orders of magnitude more. So a path passes when

    error(fast, exact) <= MULTIPLE * error(same_dtype, exact) + FLOOR[precision]

where each error is max |a - exact| / max |exact| over the tensor, and its top-1 agrees with the
exact top-1 on every row whose exact top-1 / top-2 margin is wider than the allowed error (rows
closer than that are near-ties, which any correct low-precision path may flip).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

# How much worse than the reference's own error a correct path may be. Two correct fp32 runs of a
# whole model through different GEMM libraries and fusions land at error ratios well apart: ONNX
# Runtime's fp32 logits against ours were 0.54x (B/32) and 2.7x (B/16) on one AMD EPYC, each the
# max over 2 videos x 16 labels. 4 leaves room for that spread; a wrong graph (one weight changed)
# errs by more than 10x the bound.
MULTIPLE = 4.0
# The floor covers outputs that the same-dtype reference happens to compute almost exactly (a
# tensor with few reductions): a few units in the last place of each dtype, relative to the range.
FLOOR = {"fp32": 2e-6, "fp16": 1e-3, "bf16": 4e-3, "int8": 0.0}


@dataclass
class Verdict:
    name: str              # what was compared: "logits", "video.fp32.onnx logits", ...
    precision: str
    error: float           # max |fast - exact| / max |exact|
    ref_error: float       # the same for the same-dtype reference (nan: none given)
    bound: float
    top1: tuple[int, int]  # (agreeing rows, rows that are not near-ties); (0, 0) for no class axis
    ok: bool
    why: str = ""          # what failed, empty when ok

    def row(self) -> str:
        ref = "-" if math.isnan(self.ref_error) else f"{self.ref_error:.2e}"
        top = f"  top-1 {self.top1[0]}/{self.top1[1]}" if self.top1[1] else ""
        verdict = "ok" if self.ok else f"FAIL ({self.why})"
        return (f"{self.name}: error {self.error:.2e}, reference's own {ref}, bound {self.bound:.2e}{top}  "
                f"{verdict}")


def rel_error(got, exact) -> float:
    """max |got - exact| / max |exact| in float64; inf for NaN/inf or a shape mismatch."""
    got, exact = torch.as_tensor(got).detach().double().cpu(), torch.as_tensor(exact).detach().double().cpu()
    if got.shape != exact.shape or not torch.isfinite(got).all():
        return float("inf")
    scale = float(exact.abs().max()) if exact.numel() else 0.0
    return float((got - exact).abs().max()) / (scale or 1.0) if got.numel() else 0.0


def top1_agreement(got, exact, margin: float) -> tuple[int, int]:
    """(rows where got's argmax equals exact's, rows whose exact top-2 gap exceeds `margin`) of [B, K]."""
    got, exact = torch.as_tensor(got).detach().double().cpu(), torch.as_tensor(exact).detach().double().cpu()
    if exact.ndim != 2 or exact.shape[-1] < 2:
        return 0, 0
    top2 = exact.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    agree = got.argmax(-1) == exact.argmax(-1)
    return int((agree & clear).sum()), int(clear.sum())


def judge(name: str, fast, exact, same_dtype=None, precision: str = "fp32", *, classes: bool = False,
          bound: float | None = None, multiple: float = MULTIPLE) -> Verdict:
    """Judge `fast` against `exact` (float64). The bound is `multiple` x the error of `same_dtype`
    (the reference computed in `precision`) plus the precision's floor, or `bound` when given (a
    path with no same-dtype reference, e.g. int8, is judged by top-1 and a stated bound).
    `classes`: the last axis holds class scores, so top-1 agreement is checked too."""
    err = rel_error(fast, exact)
    ref_err = rel_error(same_dtype, exact) if same_dtype is not None else float("nan")
    if bound is None:
        if same_dtype is None:
            raise ValueError(f"judge({name!r}): give the same-dtype reference or an explicit bound")
        bound = multiple * ref_err + FLOOR.get(precision, 0.0)
    why = []
    if not math.isfinite(err):
        why.append("NaN/inf or wrong shape")
    elif err > bound:
        why.append(f"error {err / max(bound, 1e-300):.1f}x the bound")
    top1 = (0, 0)
    if classes:
        scale = float(torch.as_tensor(exact).detach().double().abs().max())
        # two logits can each move by the allowed error, in opposite directions
        top1 = top1_agreement(fast, exact, 2 * bound * scale)
        if top1[0] != top1[1]:
            why.append(f"top-1 differs on {top1[1] - top1[0]} of {top1[1]} clear rows")
    return Verdict(name, precision, err, ref_err, bound, top1, not why, "; ".join(why))


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a reference model, for the exact side of a comparison (the original is
    left as it is)."""
    return copy.deepcopy(module).double().eval()
