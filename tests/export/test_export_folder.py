"""What `export_model` writes: files, manifest, the check table, and a reload in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import xclip_engine as xe
from xclip_engine.export.manifest import FORMAT_VERSION, file_entry, read_manifest


def test_folder_holds_everything_a_runtime_needs(tiny_export, reference):
    folder = tiny_export.folder
    names = set(os.listdir(folder))
    for p in ("fp32", "fp16"):
        assert {f"text.{p}.onnx", f"video.{p}.onnx"} <= names
    assert "video.int8.onnx" in names and "text.int8.onnx" not in names     # int8 runs the fp32 text graph
    assert {"manifest.json", "vocab.json", "merges.txt"} <= names
    m = read_manifest(folder)
    assert m.config == reference.config
    assert m.precisions() == ["fp32", "fp16", "int8"]
    raw = m.raw
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["preprocessing"]["mean"] == [123.675, 116.28, 103.53]
    assert raw["preprocessing"]["crop"] == reference.config.image_size
    assert raw["source"]["kind"] == "transformers"
    assert set(raw["versions"]) >= {"xclip_engine", "torch", "onnx", "onnxruntime", "opset"}
    for role in ("text", "video"):
        for p in m.precisions():
            entry = m.graphs[role][p]
            assert os.path.getsize(os.path.join(folder, entry["file"])) == entry["bytes"]
            onnx.checker.check_model(os.path.join(folder, entry["file"]))


def test_graph_signatures_have_dynamic_batch_and_labels(tiny_export):
    text = onnx.load(os.path.join(tiny_export.folder, "text.fp32.onnx"), load_external_data=False)
    video = onnx.load(os.path.join(tiny_export.folder, "video.fp32.onnx"), load_external_data=False)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    ids, = text.graph.input
    assert ids.name == "input_ids" and all(isinstance(d, str) for d in dims(ids))   # K and L both dynamic
    px, tf = video.graph.input
    assert (px.name, tf.name) == ("pixel_values", "text_features")
    assert isinstance(dims(px)[0], str) and dims(px)[1:] == [4, 3, 32, 32]
    assert isinstance(dims(tf)[0], str) and dims(tf)[1] == 64
    assert [o.name for o in video.graph.output] == ["logits", "video_embeds"]


def test_check_table_lists_every_file_with_its_error(tiny_export):
    rows = {(r.file, r.precision): r for r in tiny_export.rows if "OpenVINO" not in r.precision}
    assert set(rows) == {(f"{r}.{p}.onnx", p) for r in ("text", "video") for p in ("fp32", "fp16")} | {
        ("text.fp32.onnx", "int8"), ("video.int8.onnx", "int8")}
    for name, p in (("text.fp32.onnx", "fp32"), ("video.fp32.onnx", "fp32"), ("text.fp16.onnx", "fp16"),
                    ("video.fp16.onnx", "fp16")):
        assert rows[name, p].ok, rows[name, p]
    for row in rows.values():
        for v in row.verdicts:
            assert np.isfinite(v.error), v
            if row.precision != "int8":
                # the yardstick: within the bound set by the same-dtype reference's own error
                assert v.error <= v.bound and v.ref_error > 0, v
    printed = "\n".join(tiny_export.log)
    assert "ref's own" in printed and "video.int8.onnx" in printed and "float64" in printed
    saved = json.load(open(os.path.join(tiny_export.folder, "manifest.json")))["checks"]
    assert {(c["file"], c["precision"]) for c in saved if "OpenVINO" not in c["precision"]} == set(rows)
    assert all(set(c["outputs"]["logits" if c["file"].startswith("video") else "text"]) >= {"error", "bound", "ok"}
               for c in saved)


def test_a_perturbed_graph_fails_its_check_with_a_table_naming_it(export_copy, reference):
    """One weight of the fp32 video graph changed: the check fails and names video.fp32.onnx."""
    from onnx import numpy_helper

    from xclip_engine.export import checks

    path = os.path.join(export_copy, "video.fp32.onnx")
    graph = onnx.load(path)
    # the largest initializer is a weight matrix of the vision tower: nudge one entry
    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5 * float(np.abs(w).max())
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(graph, path)
    # an export that wrote a wrong graph: its manifest vouches for the file as written (a graph
    # changed after export is refused on load instead, tests/export/test_folder_trust.py)
    entry = file_entry(str(export_copy), "video.fp32.onnx")
    data = json.loads((export_copy / "manifest.json").read_text())
    data["graphs"]["video"]["fp32"] = entry
    (export_copy / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(export_copy)
    ids, px = checks.sample_inputs(reference.config, reference.tokenizer, ["abseiling", "surfing water", "archery"])
    refs = checks.yardstick(reference.net, ids, px, ["fp32"])
    rows = {r.file: r for r in checks.check_precision(manifest, "fp32", refs, ids, px)}
    assert rows["text.fp32.onnx"].ok and not rows["video.fp32.onnx"].ok
    table = checks.format_table(list(rows.values()))
    bad = [line for line in table.splitlines() if "FAIL" in line]
    assert bad and any("video.fp32.onnx" in line for line in table.splitlines()[2:]), table
    assert rows["video.fp32.onnx"].worst.error > 10 * rows["video.fp32.onnx"].worst.bound


def test_reloads_in_a_fresh_process(tiny_export, reference, tmp_path):
    labels = ["abseiling", "playing guitar", "surfing water"]
    g = torch.Generator().manual_seed(3)
    px = torch.randn(2, 4, 3, 32, 32, generator=g)
    np.save(tmp_path / "px.npy", px.numpy())
    script = (
        "import sys, numpy as np, xclip_engine as xe\n"
        "m = xe.load(sys.argv[1], backend='onnxruntime', device='cpu')\n"
        f"np.save(sys.argv[2], m.logits(np.load(sys.argv[3]), {labels!r}).numpy())\n")
    subprocess.run([sys.executable, "-c", script, tiny_export.folder, str(tmp_path / "out.npy"),
                    str(tmp_path / "px.npy")], check=True, timeout=300)
    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    want = reference.logits(px, labels)
    from helpers import assert_close

    assert_close(got, want, rtol=1e-4, name="logits after reload")
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_reference_backend_refuses_an_export_folder(tiny_export):
    with pytest.raises(xe.CheckpointError, match="onnxruntime"):
        xe.load(tiny_export.folder)
