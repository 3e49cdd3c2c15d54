"""`xclip-engine export`: exit codes and messages, and the folder it writes serving `infer`."""

import os

import pytest
import torch
from click.testing import CliRunner
from video_factory import write_index_video

from xclip_engine.engine.cli import main
from xclip_engine.export.cli import export_cmd


def run(args):
    return CliRunner().invoke(export_cmd, args)


def test_no_model_exports_the_bundled_model(tmp_path):
    out = tmp_path / "default"
    r = run(["--out", str(out), "--int8"])
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file()
    with open(out / "manifest.json") as f:
        assert "default_model" in f.read()          # the manifest names the source checkpoint


def test_unreadable_model_is_a_usage_error(tmp_path):
    r = run(["--model", str(tmp_path / "nothing.pth"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "cannot export" in r.output and "nothing.pth" in r.output


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    r = run(["--model", "xclip-tiny-test", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "is a file" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of --tensorrt")
def test_tensorrt_without_gpu_writes_onnx_then_exits_2(tiny_hf, tmp_path):
    out = tmp_path / "onnx"
    r = run(["--model", str(tiny_hf), "--out", str(out), "--tensorrt"])
    assert r.exit_code == 2, r.output
    assert "TensorRT engines were not built" in r.output and "needs an NVIDIA GPU" in r.output
    assert "ref's own" in r.output                       # the check table came first
    assert {"text.fp16.onnx", "video.fp16.onnx", "manifest.json"} <= set(os.listdir(out))
    # and the folder serves `xclip-engine infer --backend onnxruntime`
    video = write_index_video(tmp_path / "clip.mp4", 16, codec="h264", size=(64, 48))
    r = CliRunner().invoke(main, ["infer", video, "--model", str(out), "--backend", "onnxruntime",
                                  "--labels", "cooking, dancing, surfing", "--format", "json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert '"label"' in r.output and "clip.mp4" in r.output
