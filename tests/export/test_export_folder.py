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
from xclip_engine.export.manifest import FORMAT_VERSION, read_manifest


def test_folder_holds_everything_a_runtime_needs(tiny_export, reference):
    folder = tiny_export.folder
    names = set(os.listdir(folder))
    for p in ("fp32", "fp16", "int8"):
        assert {f"text.{p}.onnx", f"video.{p}.onnx"} <= names
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
    rows = {r.file: r for r in tiny_export.rows}
    assert set(rows) == {f"{r}.{p}.onnx" for r in ("text", "video") for p in ("fp32", "fp16", "int8")}
    for name in ("text.fp32.onnx", "video.fp32.onnx"):
        assert rows[name].ok and rows[name].max_error <= 1e-4, rows[name]
    assert all(np.isfinite(r.max_error) for r in rows.values())
    printed = "\n".join(tiny_export.log)
    assert "max error" in printed and "video.int8.onnx" in printed
    assert json.load(open(os.path.join(tiny_export.folder, "manifest.json")))["checks"]


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
