"""The ONNX Runtime backend: the reference API on an export folder, fusions checked, graphs cached."""

import os
import warnings

import pytest
import torch
from helpers import assert_classifies_like, assert_close

import xclip_engine as xe
from xclip_engine.export.runtime import load_runtime

LABELS = ["abseiling", "air drumming", "playing guitar", "surfing water", "yoga"]


@pytest.fixture(scope="module")
def ort_model(tiny_export):
    return xe.load(tiny_export.folder, backend="onnxruntime", device="cpu")


def test_same_api_and_outputs_as_the_reference(ort_model, reference):
    assert ort_model.backend == "onnxruntime" and ort_model.kind == "export"
    assert (ort_model.num_frames, ort_model.image_size) == (reference.num_frames, reference.image_size)
    g = torch.Generator().manual_seed(5)
    for b, k in ((1, 1), (3, 5), (9, 2)):                   # dynamic B and K, including 1
        px = torch.randn(b, 4, 3, 32, 32, generator=g)
        text, ref_text = ort_model.encode_text(LABELS[:k]), reference.encode_text(LABELS[:k])
        assert_close(text, ref_text, rtol=1e-4, name=f"text K={k}")
        assert_close(ort_model.logits(px, text), reference.logits(px, ref_text), rtol=1e-4, name=f"logits B={b}")
        assert_close(ort_model.encode_video(px), reference.encode_video(px), rtol=1e-4, name=f"video B={b}")
    with pytest.raises(NotImplementedError, match="visual tokens"):
        ort_model.net.video_features(px)


def test_token_ids_of_any_padding(ort_model, reference):
    ids = reference.tokenizer(["a long label with several words in it", "x"])
    # the runner trims the padding after the longest label; full 77 and trimmed must agree
    assert_close(ort_model.encode_text(ids), reference.encode_text(ids), rtol=1e-4, name="text from ids")
    assert_close(ort_model.encode_text(ids[:, :12]), reference.encode_text(ids), rtol=1e-4, name="text, 12 ids")


def test_classify_video_files(ort_model, reference, tmp_path):
    assert_classifies_like(ort_model, reference, tmp_path, LABELS)


def test_fusions_applied_and_checked(ort_model):
    info = ort_model.net.describe()
    assert info["providers"] == ["CPUExecutionProvider"]
    for role in ("text", "video"):
        assert info[role]["fusion"] == "on", info[role]
        assert info[role]["fused"].get("LayerNormalization", 0) > 0
        assert info[role]["fused"].get("QuickGelu", 0) > 0
        # the CPU recipe keeps residual adds apart (ort_runner.fuse: the CPU kernel is slower fused)
        assert "SkipLayerNormalization" not in info[role]["fused"]
        assert info[role]["fusion_max_rel_error"] <= 1e-4


def test_gpu_recipe_fuses_skip_layer_norm(tiny_export):
    from xclip_engine.export.manifest import read_manifest
    from xclip_engine.export.ort_runner import fuse

    manifest = read_manifest(tiny_export.folder)
    for role in ("text", "video"):
        _, stats = fuse(manifest.path(role, "fp32"), manifest.config, role, cpu_only=False)
        assert stats.get("SkipLayerNormalization", 0) > 0, (role, stats)


def test_optimized_graph_cached_in_the_folder(export_copy, reference):
    first = load_runtime(str(export_copy), "onnxruntime", "cpu")
    cached = sorted(f for f in os.listdir(export_copy / "cache") if f.endswith(".onnx"))
    assert len(cached) == 2 and all(".fp32." in f for f in cached)
    stamps = {f: os.path.getmtime(export_copy / "cache" / f) for f in cached}
    again = load_runtime(str(export_copy), "onnxruntime", "cpu")     # reads the cache, rebuilds nothing
    assert {f: os.path.getmtime(export_copy / "cache" / f) for f in cached} == stamps
    assert again.net.describe()["video"] == first.net.describe()["video"]
    px = torch.randn(2, 4, 3, 32, 32)
    assert_close(again.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits from cache")
    # a damaged cache entry is rebuilt with a warning, never an error
    video = next(f for f in cached if f.startswith("video"))
    (export_copy / "cache" / video).write_bytes(b"not a graph")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = load_runtime(str(export_copy), "onnxruntime", "cpu")
    assert any("rebuilding" in str(w.message) for w in caught)
    assert_close(rebuilt.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, rebuilt cache")


def test_big_graphs_build_in_a_child_process(export_copy, reference, monkeypatch):
    # the threshold at 0 makes the tiny graphs "big": each is fused, checked and cached by a child
    # process, and this process only loads the cache (it never holds the build's protobuf copies)
    from xclip_engine.export import ort_runner

    monkeypatch.setattr(ort_runner, "BUILD_IN_CHILD_BYTES", 0)
    children, real = [], ort_runner._build_in_child
    monkeypatch.setattr(ort_runner, "_build_in_child", lambda *a: children.append(a[1]) or real(*a))
    built_here = []
    real_fuse = ort_runner.fuse
    monkeypatch.setattr(ort_runner, "fuse", lambda *a, **k: built_here.append(a[2]) or real_fuse(*a, **k))
    m = load_runtime(str(export_copy), "onnxruntime", "cpu")
    assert children == ["text", "video"] and built_here == []
    assert sorted(f for f in os.listdir(export_copy / "cache") if f.endswith(".onnx"))
    info = m.net.describe()
    assert info["video"]["fusion"] == "on" and info["video"]["fused"].get("QuickGelu", 0) > 0
    px = torch.randn(2, 4, 3, 32, 32)
    assert_close(m.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, built in a child")


def test_failed_child_build_falls_back_to_this_process(export_copy, reference, monkeypatch):
    from xclip_engine.export import ort_runner

    monkeypatch.setattr(ort_runner, "BUILD_IN_CHILD_BYTES", 0)
    monkeypatch.setattr(ort_runner, "_build_in_child", lambda *a: False)
    m = load_runtime(str(export_copy), "onnxruntime", "cpu")
    assert m.net.describe()["video"]["fusion"] == "on"
    px = torch.randn(2, 4, 3, 32, 32)
    assert_close(m.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, built here")


def test_unwritable_folder_still_serves(export_copy, reference, monkeypatch):
    # a folder the user cannot write (a shared model store): fused in memory on each load, no cache
    from xclip_engine.export import ort_runner

    monkeypatch.setattr(ort_runner, "_writable", lambda folder: False)
    m = load_runtime(str(export_copy), "onnxruntime", "cpu")
    assert not (export_copy / "cache").exists()
    assert m.net.describe()["video"]["fusion"] == "on"
    px = torch.randn(2, 4, 3, 32, 32)
    assert_close(m.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, no cache")
