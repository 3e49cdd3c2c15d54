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


def assert_classifies_like(model, reference, tmp_path, labels, tolerance: float = 1e-4):
    """`model` classifies two real files (H.264 MP4, VP9 WebM) as `reference` does (same top-3 labels,
    scores within `tolerance`), and answers a missing file with an error naming it."""
    from video_factory import write_index_video

    paths = [write_index_video(tmp_path / "a.mp4", 20, codec="h264", size=(64, 48)),
             write_index_video(tmp_path / "b.webm", 9, codec="vp9", size=(48, 64))]
    got = model.classify(paths + [str(tmp_path / "missing.mp4")], labels, topk=3)
    want = reference.classify(paths, labels, topk=3)
    for g, w in zip(got, want):
        assert [lab for lab, _ in g.top] == [lab for lab, _ in w.top]
        assert max(abs(a - b) for (_, a), (_, b) in zip(g.top, w.top)) < tolerance
    assert got[2].error and "missing.mp4" in got[2].error
