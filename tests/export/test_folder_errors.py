"""A damaged, partial or foreign export folder fails with a message naming the file and the fix."""

import json
import os

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import xclip_engine as xe
from xclip_engine.export.manifest import ExportFolderError, file_entry
from xclip_engine.export.onnx_export import ExportError, export_model
from xclip_engine.export.runtime import load_runtime


def load(folder, precision=None):
    if precision is None:   # the public path
        return xe.load(str(folder), backend="onnxruntime", device="cpu")
    return load_runtime(str(folder), "onnxruntime", "cpu", precision=precision)   # xe.load has no precision yet


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_copy_loads(export_copy):
    assert load(export_copy).encode_text(["a", "b"]).shape == (2, 64)


def test_missing_manifest(export_copy):
    os.remove(export_copy / "manifest.json")
    with pytest.raises(ExportFolderError, match=r"no manifest\.json.*xclip-engine export"):
        load(export_copy)


def test_unreadable_manifest(export_copy):
    (export_copy / "manifest.json").write_text('{"format": "xclip-engine-export", "format_')
    with pytest.raises(ExportFolderError, match="unreadable.*re-export"):
        load(export_copy)


def test_manifest_from_another_version(export_copy):
    def bump(d):
        d["format_version"] = 99
        d["versions"]["xclip_engine"] = "9.0.0"
    edit_manifest(export_copy, bump)
    with pytest.raises(ExportFolderError, match=r"format version 99 \(written by xclip-engine 9\.0\.0\).* reads "
                                                r"format version 1"):
        load(export_copy)


def test_manifest_missing_a_field(export_copy):
    edit_manifest(export_copy, lambda d: d.pop("inputs"))
    with pytest.raises(ExportFolderError, match="incomplete or malformed.*inputs"):
        load(export_copy)


def test_partial_copy_missing_graph(export_copy):
    os.remove(export_copy / "video.fp32.onnx")
    with pytest.raises(ExportFolderError, match=r"video\.fp32\.onnx \(fp32 video graph\) is missing"):
        load(export_copy)


def test_truncated_graph(export_copy):
    path = export_copy / "text.fp32.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportFolderError, match=r"text\.fp32\.onnx: \d+ bytes, the manifest says \d+"):
        load(export_copy)


def test_corrupt_graph_of_the_right_size(export_copy):
    path = export_copy / "video.int8.onnx"
    path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8) + b"\x00" * (path.stat().st_size % 8))
    with pytest.raises(ExportFolderError, match=r"video\.int8\.onnx: its sha256 is .* the manifest says"):
        load(export_copy, precision="int8")
    # a manifest that vouches for the garbage: ONNX Runtime's refusal is the message
    entry = file_entry(str(export_copy), "video.int8.onnx")
    edit_manifest(export_copy, lambda d: d["graphs"]["video"].update(int8=entry))
    with pytest.raises(ExportFolderError, match=r"video\.int8\.onnx: ONNX Runtime cannot load this graph"):
        load(export_copy, precision="int8")


def test_missing_vocabulary(export_copy):
    os.remove(export_copy / "merges.txt")
    with pytest.raises(ExportFolderError, match=r"merges\.txt .*missing"):
        load(export_copy)


def test_graph_with_wrong_input_names(export_copy):
    # a valid graph, but not ours: the text graph's input is called "ids"
    node = helper.make_node("Cast", ["ids"], ["text_features"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "foreign", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["K", "L"])],
                              [helper.make_tensor_value_info("text_features", TensorProto.FLOAT, ["K", "L"])])
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(foreign, export_copy / "text.fp32.onnx")
    entry = file_entry(str(export_copy), "text.fp32.onnx")
    # int8 runs the fp32 text graph: its entry names the same file
    edit_manifest(export_copy, lambda d: d["graphs"]["text"].update(fp32=entry, int8=entry))
    with pytest.raises(ExportFolderError, match=r"inputs \['ids'\].*expects inputs \['input_ids'\]"):
        load(export_copy)


def test_precision_not_exported(export_copy):
    edit_manifest(export_copy, lambda d: [d["graphs"][r].pop("int8") for r in ("text", "video")])
    with pytest.raises(ExportFolderError, match=r"no int8 text graph .*--int8"):
        load(export_copy, precision="int8")
    with pytest.raises(ValueError, match="precision 'bf16' is not one of"):
        load(export_copy, precision="bf16")


def test_not_an_export_folder(tiny_hf, tmp_path):
    with pytest.raises(ExportFolderError, match="looks like a model folder: export it first"):
        load(tiny_hf)
    with pytest.raises(ExportFolderError, match="not a folder"):
        load(tmp_path / "nowhere")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_tensorrt_backend_without_a_gpu(export_copy):
    from xclip_engine.export.trt_runner import TensorRTUnavailable

    with pytest.raises(TensorRTUnavailable, match="needs an NVIDIA GPU"):
        xe.load(str(export_copy), backend="tensorrt")


def test_tensorrt_backend_without_engines(export_copy):
    pytest.importorskip("tensorrt", reason="needs the tensorrt package and a CUDA GPU")
    if not torch.cuda.is_available():
        pytest.skip(reason="needs a CUDA GPU")
    with pytest.raises(ExportFolderError, match="has no TensorRT engines"):
        xe.load(str(export_copy), backend="tensorrt")


def test_export_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="other files in it and no manifest.json"):
        export_model("xclip-tiny-test", str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"
