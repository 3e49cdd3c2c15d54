"""EVL against an independent statement of its math (tests/evl/factory.py), float64 both sides.

The model is built by the official-file loader from weights in the official names, so one test covers
the key tables and the arithmetic: a wrong name, a transposed table or a sign in the relative offsets
moves the logits far beyond the tolerance.
"""

import pytest
import torch

from xclip_engine.engine.checkpoint import load_model
from xclip_engine.engine.model.ops import REFERENCE, relative_position_index

from .factory import random_official, reference_adjacent, reference_logits, write_official_pth


def test_relative_position_index_by_hand():
    # g = 2: patches (0,0) (0,1) (1,0) (1,1); idx = (r - r' + 1) * 3 + (c - c' + 1)
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    idx = relative_position_index(3)           # (r - r' + 2) * 5 + (c - c' + 2)
    assert idx.shape == (9, 9)
    assert idx[0, 0] == idx[4, 4] == idx[8, 8] == 12          # no offset: the centre of the 5 x 5 table
    assert idx[0, 8] == 0                                     # query (0,0), key (2,2): offset (-2, -2)
    assert idx[8, 0] == 24                                    # query (2,2), key (0,0): offset (+2, +2)
    assert idx[1, 3] == (0 - 1 + 2) * 5 + (1 - 0 + 2)         # query (0,1), key (1,0) -> 8
    assert idx[5, 1] == (1 - 0 + 2) * 5 + (2 - 1 + 2)         # query (1,2), key (0,1) -> 18
    assert idx[2, 6] == 4 and idx[6, 2] == 20                 # (0,2) vs (2,0) and back


@pytest.mark.parametrize("grid, frames, heads", [(4, 4, 2), (14, 8, 1), (14, 4, 2)])
def test_adjacent_frame_feature_against_loops(grid, frames, heads):
    # head width 64, few channels in the tables: the loops cost frames x patches x heads
    g = torch.Generator().manual_seed(grid + frames)
    b, dh, c = 1, 64, 6
    seq = grid * grid + 1
    q = torch.randn(b, frames, seq, heads, dh, generator=g, dtype=torch.float64) * 0.3
    k = torch.randn(b, frames, seq, heads, dh, generator=g, dtype=torch.float64) * 0.3
    w1 = torch.randn((2 * grid - 1) ** 2, c, generator=g, dtype=torch.float64)
    w2 = torch.randn((2 * grid - 1) ** 2, c, generator=g, dtype=torch.float64)
    got = REFERENCE.adjacent_frame_feature(q, k, w1, w2, grid)
    want = reference_adjacent(q[0].flatten(2), k[0].flatten(2), w1, w2, grid, heads)
    torch.testing.assert_close(got[0], want, rtol=1e-12, atol=1e-12)
    assert got[0, :, 0].abs().max() == 0                      # the class-token row gets nothing


CASES = [  # width (head width 64), backbone layers, patch, grid, frames, decoder layers
    dict(width=64, layers=2, patch=8, grid=4, frames=4, decoder_layers=2),
    dict(width=128, layers=2, patch=4, grid=4, frames=8, decoder_layers=1),
    dict(width=64, layers=1, patch=2, grid=14, frames=4, decoder_layers=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c['width']}-g{c['grid']}-T{c['frames']}")
def test_whole_model_float64_against_loops(case, tmp_path):
    visual, decoder = random_official(classes=7, seed=case["grid"] * 10 + case["frames"], **case)
    torch.save(visual, tmp_path / "clip.pt")
    pth = write_official_pth(tmp_path / "evl.pth", decoder)
    model = load_model(pth, backbone=tmp_path / "clip.pt").model.double()
    size = case["patch"] * case["grid"]
    b = 2 if case is CASES[0] else 1     # the loops are slow: a batch of two once, else one video
    x = torch.randn(b, case["frames"], 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
    want = reference_logits(visual, decoder, x)
    assert got.shape == (b, 7)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the temporal terms matter: without them the answer is far off
    for m in model.temporal:
        torch.nn.init.zeros_(m.w_prev)
        torch.nn.init.zeros_(m.w_next)
    with torch.no_grad():
        assert (model(x) - want).abs().max() > 1e-4
