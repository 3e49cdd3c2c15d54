"""Static int8 (`export --int8`): which layers are quantized, calibration from the user's clips or the
built-in set, and the errors of bad calibration input. Accuracy: tests/export/test_precision.py (the
bundled model's held-out clips) and tests/parity/test_export_parity.py (full-size B/32)."""

import json
import os

import onnx
import pytest
import torch
from click.testing import CliRunner
from video_factory import write_index_video

from xclip_engine.export.calibration import CalibrationError, builtin_clips, calibration_pixels
from xclip_engine.export.cli import export_cmd
from xclip_engine.export.onnx_export import export_model
from xclip_engine.export.quantize import BLOCKS, layers_kept_in_float


def _ops(path):
    return [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]


def test_the_int8_graph_is_static_qdq_and_keeps_the_sensitive_layers_float(tiny_export):
    folder = tiny_export.folder
    ops = _ops(os.path.join(folder, "video.int8.onnx"))
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    assert "DynamicQuantizeLinear" not in ops          # activations' scales are fixed: static, not dynamic
    fp32 = onnx.load(os.path.join(folder, "video.fp32.onnx"), load_external_data=False)
    keep = layers_kept_in_float(fp32)
    why = set(keep.values())
    assert {"a product of two activations (attention)", "cross-frame message module",
            "outside the vision transformer's blocks (patch embedding, projections, heads)"} <= why
    # every matmul of the vision blocks' MLPs is quantized (the MIT's stay float: it is a head)
    mlp = [n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm") and any(
        p.key == "namespace" and ".mlp" in p.value and BLOCKS.search(p.value) for p in n.metadata_props)]
    assert mlp and not set(mlp) & set(keep)
    with open(os.path.join(folder, "manifest.json")) as f:
        m = json.load(f)
    assert m["int8"]["calibration"] == "8 built-in clips" and m["int8"]["kept_float"] == len(keep)
    assert m["graphs"]["text"]["int8"] == m["graphs"]["text"]["fp32"]   # the text tower is not quantized


def test_calibration_from_a_folder_of_the_users_clips(tiny_hf, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        write_index_video(str(clips / f"c{i}.mp4"), 24)
    (clips / "broken.mp4").write_bytes(b"not a video")
    lines = []
    result = export_model(str(tiny_hf), str(tmp_path / "out"), int8=True, calibrate=str(clips), calibrate_clips=8,
                          echo=lines.append)
    assert result.manifest["int8"]["calibration"] == f"3 clips from {clips}"
    assert any("skipped 1 calibration clip" in line and "broken.mp4" in line for line in lines)


def test_builtin_clips_are_seeded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = builtin_clips(str(a), 2), builtin_clips(str(b), 2)
    assert [open(x, "rb").read() for x in pa] == [open(x, "rb").read() for x in pb]


def test_calibration_errors_name_the_input(reference, tmp_path):
    with pytest.raises(CalibrationError, match="not a folder"):
        calibration_pixels(reference.config, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no video files"):
        calibration_pixels(reference.config, str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="none of its clips decode"):
        calibration_pixels(reference.config, str(bad), echo=lambda m: None)
    px = calibration_pixels(reference.config, None, count=2, echo=lambda m: None)
    c = reference.config
    assert px.shape == (2, c.num_frames, 3, c.image_size, c.image_size) and torch.isfinite(px).all()


def test_cli_calibrate_needs_int8_and_a_real_folder(tmp_path):
    r = CliRunner().invoke(export_cmd, ["--model", "xclip-tiny-test", "--random-init", "--out", str(tmp_path / "o"),
                                        "--calibrate", str(tmp_path)])
    assert r.exit_code == 2 and "add --int8" in r.output
    r = CliRunner().invoke(export_cmd, ["--model", "xclip-tiny-test", "--random-init", "--out", str(tmp_path / "o"),
                                        "--int8", "--calibrate", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "nothing" in r.output and "not a folder" in r.output
    assert not (tmp_path / "o").exists()       # refused before anything was written
