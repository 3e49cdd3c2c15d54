"""backend="auto" (engine/backend_choice.py): which path it takes for each machine, with the
capabilities monkeypatched, and that load() records the choice in model.backend_note."""

import json

import pytest
import torch

import xclip_engine as xe
from xclip_engine.engine import backend_choice as bc


@pytest.fixture
def machine(monkeypatch):
    """set(gpu=..., amx=..., have=(module names importable)): a machine for choose_backend."""
    def set_(gpu=False, amx=False, have=()):
        monkeypatch.setattr(bc, "cuda_available", lambda: gpu)
        monkeypatch.setattr(bc, "amx_bf16", lambda: (amx, "AMX here" if amx else "no AMX here"))
        monkeypatch.setattr(bc, "module_available", lambda name: name in have)
    return set_


def test_cpu_with_amx_takes_bf16_reference(machine, tiny_hf):
    machine(amx=True)
    assert bc.choose_backend(tiny_hf)[:2] == ("reference", "bf16")
    m = xe.load(tiny_hf, backend="auto")
    assert m.backend == "reference" and m.net.precision == "bf16"
    assert m.net.visual.conv1.weight.dtype == torch.bfloat16
    assert "bf16" in m.backend_note and "AMX here" in m.backend_note


def test_cpu_without_amx_takes_fp32_reference(machine, tiny_hf):
    machine(amx=False)
    assert bc.choose_backend(tiny_hf)[:2] == ("reference", None)
    m = xe.load(tiny_hf, backend="auto")
    assert m.backend == "reference" and getattr(m.net, "precision", "fp32") == "fp32"
    assert m.net.visual.conv1.weight.dtype == torch.float32
    assert "fp32" in m.backend_note and "no AMX here" in m.backend_note


def test_asked_precision_wins_over_the_cpu_choice(machine, tiny_hf):
    machine(amx=True)
    assert bc.choose_backend(tiny_hf, precision="fp32")[:2] == ("reference", "fp32")
    m = xe.load(tiny_hf, backend="auto", precision="fp32")
    assert getattr(m.net, "precision", "fp32") == "fp32"


def test_gpu_takes_triton_when_it_imports(machine, tiny_hf):
    machine(gpu=True, have=("triton",))
    backend, precision, note = bc.choose_backend(tiny_hf)
    assert (backend, precision) == ("triton", None) and "triton" in note
    machine(gpu=True, have=())
    assert bc.choose_backend(tiny_hf)[:2] == ("reference", None)
    machine(gpu=True, have=("triton",))
    assert bc.choose_backend(tiny_hf, device="cpu")[0] == "reference", "device='cpu' is not the GPU"


def test_export_folders_run_on_their_runtime(machine, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "xclip-engine-export"}))
    machine(amx=True, have=("tensorrt",))
    assert bc.choose_backend(tmp_path)[:2] == ("onnxruntime", None)
    assert bc.choose_backend(tmp_path, precision="int8")[:2] == ("onnxruntime", "int8")
    machine(gpu=True, have=("tensorrt",))
    assert bc.choose_backend(tmp_path)[0] == "onnxruntime", "no TensorRT plan in the folder"
    (tmp_path / "manifest.json").write_text(json.dumps({"tensorrt": {"video": {"file": "video.plan"}}}))
    assert bc.choose_backend(tmp_path)[0] == "tensorrt"
    machine(gpu=True, have=())
    assert bc.choose_backend(tmp_path)[0] == "onnxruntime", "no tensorrt package"


def test_explicit_backends_get_a_note_too(tiny_hf):
    m = xe.load(tiny_hf)
    assert m.backend_note == "reference (fp32, asked for)"


def test_unknown_backend_is_refused(tiny_hf):
    with pytest.raises(ValueError, match="auto, reference"):
        xe.load(tiny_hf, backend="fastest")


def test_real_probe_answers_with_a_reason():
    amx, why = bc.amx_bf16()
    assert isinstance(amx, bool) and "AMX" in why
