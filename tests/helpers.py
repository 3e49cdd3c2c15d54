"""The one comparison helper of the test suite: says where and how badly two tensors differ."""

import numpy as np
import torch


def assert_close(actual, expected, rtol=1e-4, atol=0.0, name="tensor", scale=None):
    """Assert |actual - expected| <= atol + rtol * scale elementwise.

    `scale` defaults to max|expected| (relative to the tensor's range, so values near zero do not
    make a 1e-4 relative bound meaningless). Fails on any NaN/inf and prints the worst indices.
    """
    a = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual).detach()
    e = torch.as_tensor(np.asarray(expected) if not torch.is_tensor(expected) else expected).detach()
    a, e = a.double().cpu(), e.double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bad = ~torch.isfinite(a)
    assert not bad.any(), f"{name}: {int(bad.sum())} NaN/inf values, first at {bad.nonzero()[0].tolist()}"
    assert torch.isfinite(e).all(), f"{name}: the expected tensor has NaN/inf"
    if scale is None:
        scale = float(e.abs().max()) if e.numel() else 0.0
    err = (a - e).abs()
    bound = atol + rtol * scale
    if err.numel() and float(err.max()) > bound:
        worst = torch.topk(err.flatten(), min(5, err.numel())).indices
        rows = []
        for flat in worst.tolist():
            idx = np.unravel_index(flat, tuple(a.shape))
            rows.append(f"  at {tuple(int(i) for i in idx)}: got {a[idx].item():.6g}, "
                        f"expected {e[idx].item():.6g}, |diff| {err[idx].item():.3g}")
        raise AssertionError(
            f"{name}: max |diff| {float(err.max()):.3g} > bound {bound:.3g} "
            f"(rtol {rtol} x scale {scale:.4g} + atol {atol}); worst:\n" + "\n".join(rows))
    return float(err.max()) / scale if scale else float(err.max()) if err.numel() else 0.0
