"""The reference model's own properties (transformers parity lives in tests/parity)."""

import pytest
import torch
from xclip_factory import token_batch

from xclip_engine.engine.config import TINY, get_config, list_models
from xclip_engine.engine.model import XCLIP


def test_registry_has_the_released_shapes():
    names = list_models()
    for name in ["xclip-base-patch32", "xclip-base-patch32-16-frames", "xclip-base-patch16",
                 "xclip-base-patch16-16-frames", "xclip-base-patch16-32-frames", "xclip-large-patch14",
                 "xclip-large-patch14-16-frames", "xclip-tiny-test"]:
        assert name in names
    large = get_config("xclip-large-patch14-16-frames")
    assert (large.image_size, large.num_frames, large.vision_heads, large.mit_heads, large.prompt_heads) == \
        (336, 16, 16, 12, 12)
    assert get_config("xclip-base-patch16-32-frames").num_frames == 32


def test_text_padding_after_eot_does_not_matter():
    # the text tower trims the batch to its longest label; the features must not change
    m = XCLIP(TINY).eval()
    ids = token_batch(4)
    with torch.no_grad():
        full = m.encode_text(ids)
        alone = torch.cat([m.encode_text(ids[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-6)


def test_batch_order_does_not_matter_and_frame_order_does():
    m = XCLIP(TINY).eval()
    x = torch.randn(3, TINY.num_frames, 3, 32, 32)
    with torch.no_grad():
        v, v_rev = m.encode_video(x), m.encode_video(x.flip(0))
        # the MIT sees the order of the per-frame features (its position embedding)
        m.mit.positional_embedding.normal_(std=1.0)
        f = torch.randn(2, TINY.num_frames, TINY.embed_dim)
        diff = (m.mit(f) - m.mit(f.flip(1))).abs().max()
    torch.testing.assert_close(v, v_rev.flip(0), rtol=1e-5, atol=1e-5)
    assert diff > 1e-3, diff   # exactly order-blind would be ~1e-7


def test_wrong_frame_count_is_a_clear_error():
    m = XCLIP(TINY).eval()
    with pytest.raises(ValueError, match="takes 4 frames per video, got 5"):
        m.encode_video(torch.randn(1, 5, 3, 32, 32))


def test_gradients_reach_every_parameter():
    m = XCLIP(TINY).train()
    logits = m(torch.randn(2, TINY.num_frames, 3, 32, 32), m.encode_text(token_batch(3)))
    logits.logsumexp(-1).sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_registry_entries_carry_family_and_preprocessing():
    from xclip_engine.engine.config import REGISTRY

    entry = REGISTRY["xclip-base-patch16"]
    assert entry.family == "xclip"
    pre = entry.preprocessing
    assert (pre["sampling"], pre["num_frames"], pre["crop"], pre["resize_short_side"]) == ("tsn-center", 8, 224, 256)
    assert pre["mean"] == [123.675, 116.28, 103.53] and pre["input_range"] == "0..255"
    assert REGISTRY["xclip-large-patch14-16-frames"].preprocessing["resize_short_side"] == int(256 / 224 * 336)
