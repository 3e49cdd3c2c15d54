"""What an export folder's manifest vouches for is what gets served: content hashes, no way out of the folder.

A graph changed after export (same size, so only its sha256 tells) is refused on load, whether or
not an optimized copy of the old graph sits in cache/; the cache is keyed by the verified hash and
its own entries are checked before they are served; symlinks and paths leaving the folder are
refused; an unchanged folder loads, the second time without hashing its files again.
"""

import json
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_close
from onnx import numpy_helper

from xclip_engine.export import manifest as manifest_mod
from xclip_engine.export.manifest import ExportFolderError, file_entry, read_manifest
from xclip_engine.export.runtime import load_runtime

LABELS = ["abseiling", "air drumming", "playing guitar", "surfing water", "yoga"]


def load(folder, precision=None):
    return load_runtime(str(folder), "onnxruntime", "cpu", precision=precision)


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def nudge_weight(path):
    """One entry of the largest initializer changed, in place; for a graph of the export, the size stays."""
    size = os.path.getsize(path)
    graph = onnx.load(str(path))
    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5 * float(np.abs(w).max()) + 1.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(graph, str(path))
    return size


@pytest.fixture
def no_racy_window(monkeypatch):
    # the test's files were written a moment ago: let the stat cache record them at once
    monkeypatch.setattr(manifest_mod, "RACY_NS", 0)
    monkeypatch.setattr(manifest_mod, "RACY_COARSE_NS", 0)


@pytest.fixture
def hashed(monkeypatch):
    """The files hashed in full (not taken from the stat cache), by name, in order."""
    names, real = [], manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda path: names.append(os.path.basename(path)) or real(path))
    return names


def test_same_size_altered_graph_is_refused(export_copy):
    path = export_copy / "video.fp32.onnx"
    assert nudge_weight(path) == os.path.getsize(path)
    read_manifest(export_copy)      # sizes agree: the cheap structural read still passes
    with pytest.raises(ExportFolderError, match=r"video\.fp32\.onnx: its sha256 is .*the manifest says.*"
                                                r"copy the whole folder again.*re-export"):
        load(export_copy)


def test_altered_graph_is_refused_with_a_cache_present(export_copy, no_racy_window):
    load(export_copy)                                  # builds cache/ and records the verified hashes
    assert any(f.endswith(".onnx") for f in os.listdir(export_copy / "cache"))
    nudge_weight(export_copy / "text.fp32.onnx")
    with pytest.raises(ExportFolderError, match=r"text\.fp32\.onnx: its sha256 is"):
        load(export_copy)


def test_cache_is_keyed_by_the_verified_hash(export_copy, reference):
    # a graph replaced along with its manifest entry (a re-export in place) never gets the old cache
    first = load(export_copy)
    px = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_close(first.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits")
    before = {f for f in os.listdir(export_copy / "cache") if f.endswith(".onnx")}
    nudge_weight(export_copy / "video.fp32.onnx")
    entry = file_entry(str(export_copy), "video.fp32.onnx")
    edit_manifest(export_copy, lambda d: d["graphs"]["video"].update(fp32=entry))
    again = load(export_copy)
    added = {f for f in os.listdir(export_copy / "cache") if f.endswith(".onnx")} - before
    assert len(added) == 1 and added.pop().startswith(f"video.fp32.{entry['sha256'][:16]}.")
    assert again.net.video.info["source_sha256"] == entry["sha256"]
    assert not torch.allclose(again.logits(px, LABELS), first.logits(px, LABELS), rtol=1e-3)


def test_unchanged_folder_loads_and_is_not_hashed_twice(export_copy, reference, no_racy_window, hashed):
    first = load(export_copy)
    assert {"text.fp32.onnx", "video.fp32.onnx"} <= set(hashed)
    hashed.clear()
    again = load(export_copy)
    assert hashed == [], "a second load of an unchanged folder read the files again to hash them"
    px = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_close(again.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, second load")
    assert again.net.describe()["video"] == first.net.describe()["video"]
    # a file touched since (same content, new ctime) is hashed again, and still loads
    os.utime(export_copy / "video.fp32.onnx")
    load(export_copy)
    assert hashed == ["video.fp32.onnx"]


def test_tampered_cache_entry_is_rebuilt_not_served(export_copy, reference, no_racy_window):
    load(export_copy)
    cache = export_copy / "cache"
    video = next(f for f in os.listdir(cache) if f.startswith("video") and f.endswith(".onnx"))
    nudge_weight(cache / video)                        # a valid graph that answers differently
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = load(export_copy)
    assert any("rebuilding" in str(w.message) and "changed since it was written" in str(w.message) for w in caught)
    px = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_close(m.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, rebuilt cache")


def test_cache_entry_of_another_graph_is_rebuilt(export_copy, reference):
    load(export_copy)
    cache = export_copy / "cache"
    info = next(cache / f for f in os.listdir(cache) if f.startswith("video") and f.endswith(".json"))
    data = json.loads(info.read_text())
    data["source_sha256"] = "0" * 64
    info.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = load(export_copy)
    assert any("made from another graph" in str(w.message) for w in caught)
    px = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert_close(m.logits(px, LABELS), reference.logits(px, LABELS), rtol=1e-4, name="logits, rebuilt cache")


def test_symlinked_graph_outside_the_folder_is_refused(export_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(export_copy / "video.fp32.onnx", outside / "video.fp32.onnx")
    os.symlink(outside / "video.fp32.onnx", export_copy / "video.fp32.onnx")
    with pytest.raises(ExportFolderError, match=r"video\.fp32\.onnx: the fp32 video graph is a symlink.*elsewhere"):
        load(export_copy)


def test_graph_in_a_symlinked_subfolder_is_refused(export_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(export_copy / "text.fp32.onnx", outside / "text.fp32.onnx")
    os.symlink(outside, export_copy / "sub")
    edit_manifest(export_copy, lambda d: d["graphs"]["text"]["fp32"].update(file="sub/text.fp32.onnx"))
    with pytest.raises(ExportFolderError, match=r"resolves to .*elsewhere.*outside the folder"):
        load(export_copy)


@pytest.mark.parametrize("name", ["../copy2/text.fp32.onnx", "/etc/passwd", "sub/../../text.fp32.onnx"])
def test_manifest_path_leaving_the_folder_is_refused(export_copy, name):
    edit_manifest(export_copy, lambda d: d["graphs"]["text"]["fp32"].update(file=name))
    with pytest.raises(ExportFolderError, match=r"fp32 text graph is .*a path outside the folder"):
        load(export_copy)


def test_graph_entry_without_sha256_is_malformed(export_copy):
    edit_manifest(export_copy, lambda d: d["graphs"]["video"]["fp16"].pop("sha256"))
    with pytest.raises(ExportFolderError, match=r"fp16 video graph entry has no valid sha256"):
        load(export_copy)


def test_symlinked_vocabulary_is_refused(export_copy, tmp_path):
    os.replace(export_copy / "merges.txt", tmp_path / "merges.txt")
    os.symlink(tmp_path / "merges.txt", export_copy / "merges.txt")
    with pytest.raises(ExportFolderError, match=r"merges\.txt: the tokenizer vocabulary .* is a symlink"):
        load(export_copy)


def test_vocabulary_with_hashes_is_verified(export_copy):
    # manifests whose vocab section has file entries (not just names) get the vocabulary's content checked
    entries = {"vocab": file_entry(str(export_copy), "vocab.json"),
               "merges": file_entry(str(export_copy), "merges.txt")}
    edit_manifest(export_copy, lambda d: d.update(vocab=entries))
    assert load(export_copy).encode_text(["a", "b"]).shape == (2, 64)
    path = export_copy / "merges.txt"
    data = bytearray(path.read_bytes())
    i = data.index(b"\n", 100) + 1            # one letter of a merge rule changed, same size
    data[i] = ord("q") if data[i] != ord("q") else ord("z")
    path.write_bytes(bytes(data))
    with pytest.raises(ExportFolderError, match=r"merges\.txt: its sha256 is .*tokenizer vocabulary"):
        load(export_copy)
