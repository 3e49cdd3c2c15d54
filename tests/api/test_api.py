"""The public API end to end on a tiny transformers-format model: load, encode, classify."""

import numpy as np
import pytest
import torch
from helpers import assert_close

import xclip_engine as xe


@pytest.fixture(scope="module")
def model(tiny_hf):
    return xe.load(str(tiny_hf))


def test_model_properties(model):
    assert (model.num_frames, model.image_size, model.backend) == (4, 32, "reference")
    assert "xclip-base-patch32" in xe.list_models()


def test_text_features_are_cached_per_label_set(model):
    a = model.encode_text(["cooking", "dancing"])
    assert model.encode_text(["cooking", "dancing"]) is a
    b = model.encode_text(["dancing", "cooking"])
    torch.testing.assert_close(b, a.flip(0))
    ids = model.tokenizer(["cooking", "dancing"])
    torch.testing.assert_close(model.encode_text(ids), a)


def test_logits_take_numpy_and_check_shape(model):
    x = np.random.randn(2, 4, 3, 32, 32).astype(np.float32)
    t = model.encode_text(["a", "b", "c"])
    assert model.logits(x, t).shape == (2, 3)
    torch.testing.assert_close(model.logits(x, ["a", "b", "c"]), model.logits(torch.from_numpy(x), t))
    with pytest.raises(ValueError, match=r"shape \(2, 4, 3, 64, 64\).*\[B, 4, 3, 32, 32\]"):
        model.logits(np.zeros((2, 4, 3, 64, 64), np.float32), t)


def test_classify_equals_read_video_then_logits(model, video_dir, good):
    labels = ["red", "green", "blue"]
    for views in ("1x1", "4x3"):
        pred = model.classify([video_dir / good[0]], labels, topk=3, views=views)[0]
        x = xe.read_video(video_dir / good[0], num_frames=4, size=32, views=views)
        probs = model.logits(x, labels).softmax(-1).mean(0)          # average of the views' softmax
        assert [lab for lab, _ in pred.top] == [labels[i] for i in probs.argsort(descending=True).tolist()]
        assert_close([s for _, s in pred.top], probs.sort(descending=True).values, rtol=1e-5, name=views)


def test_batch_with_bad_videos_answers_for_all(model, video_dir, good, bad):
    paths = [str(video_dir / p) for p in good[:1] + bad + good[1:]]
    preds = model.classify(paths, ["x", "y"], topk=5, batch_size=2)
    assert [p.path for p in preds] == paths                       # every input, in order
    for p in preds:
        if any(p.path.endswith(b) for b in bad):
            assert p.error and p.path in p.error and not p.top
        else:
            assert p.error is None and len(p.top) == 2            # topk capped at K
            assert abs(sum(s for _, s in p.top) - 1) < 1e-5
    # the same good video scores the same alone and inside a batch of failures
    alone = model.classify([paths[0]], ["x", "y"])[0]
    assert [lab for lab, _ in alone.top] == [lab for lab, _ in preds[0].top]
    assert [s for _, s in alone.top] == pytest.approx([s for _, s in preds[0].top], abs=1e-4)


def test_missing_file_and_empty_labels(model, tmp_path):
    (p,) = model.classify([tmp_path / "nope.mp4"], ["x"])
    assert "nope.mp4" in p.error
    with pytest.raises(ValueError, match="label list is empty"):
        model.classify([tmp_path / "nope.mp4"], [])
    with pytest.raises(ValueError, match="no labels given"):
        model.classify([tmp_path / "nope.mp4"])


def test_backends_not_built_say_so(tiny_hf):
    with pytest.raises(ValueError, match="not one of"):
        xe.load(str(tiny_hf), backend="cuda-graphs")
