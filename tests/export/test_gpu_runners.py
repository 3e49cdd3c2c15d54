"""The GPU paths of the runtime backends, tested on a CPU with fakes where no GPU is needed.

ONNX Runtime: which providers and options a device gets (a fake list of available providers), and
what happens when the CUDA provider does not start. TensorRT: every call of trt_runner into
TensorRT runs with the model's device current (a fake `tensorrt` module and a fake torch.cuda that
records the current device). Packaging: the gpu extra of setup.py is CUDA 12 throughout, and
scripts/setup.sh stops on a GPU machine whose torch is a CPU build. The tests that need a GPU say
so in their skip reason.
"""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from helpers import assert_close

from xclip_engine.export import ort_runner, trt_runner

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["abseiling", "air drumming", "playing guitar"]
CUDA, CPU, TRT = "CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"


# ---------------------------------------------------------------- ONNX Runtime providers


@pytest.fixture
def gpu_ort(monkeypatch):
    """onnxruntime-gpu as it reports itself on a GPU machine: TensorRT, CUDA and CPU providers."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT, CUDA, CPU])


def test_cuda_device_gets_cuda_then_cpu_never_tensorrt(gpu_ort):
    dev = torch.device("cuda:1")
    providers = ort_runner.available_providers(dev)
    assert providers == [CUDA, CPU]
    assert ort_runner._provider_options(providers, dev) == [{"device_id": 1, "use_tf32": 0}, {}]


def test_cpu_device_gets_cpu_alone(gpu_ort):
    dev = torch.device("cpu")
    assert ort_runner.available_providers(dev) == [CPU]
    assert ort_runner._provider_options([CPU], dev) == [{}]


def test_bare_cuda_is_torchs_current_device(gpu_ort, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert ort_runner._provider_options([CUDA, CPU], torch.device("cuda"))[0]["device_id"] == 2
    assert ort_runner._provider_options([CUDA, CPU], torch.device("cuda:0"))[0]["device_id"] == 0


def test_cuda_device_without_the_cuda_provider_warns_and_runs_on_cpu(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.warns(UserWarning, match="no CUDA provider"):
        assert ort_runner.available_providers(torch.device("cuda:0")) == [CPU]


def test_cuda_provider_that_does_not_start_is_cached_as_cpu(gpu_ort, export_copy, reference):
    # The package claims CUDA (the fake list) but this CPU onnxruntime cannot start it, as onnxruntime-gpu
    # cannot when its CUDA libraries do not load: ORT carries on with the CPU provider. The runner says
    # so, and builds and caches the graph as the CPU graph it is (CPU key, CPU fusion recipe).
    from xclip_engine.export.manifest import read_manifest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = ort_runner.OrtNet(read_manifest(export_copy), "fp32", torch.device("cuda:1"))
    assert any("could not start its CUDA provider" in str(w.message) for w in caught)
    cached = sorted(f for f in os.listdir(export_copy / "cache") if f.endswith(".onnx"))
    assert len(cached) == 2 and all(".cpu." in f and "cuda" not in f for f in cached), cached
    info = net.describe()
    assert info["providers"] == [CPU]
    assert "SkipLayerNormalization" not in info["video"]["fused"]
    ids, px = reference.tokenizer(LABELS), torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        text = reference.net.encode_text(ids)
        want = reference.net(px, text)
    assert_close(net.encode_text(ids), text, rtol=1e-4, name="text features")
    assert_close(net(px, text), want, rtol=1e-4, name="logits")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_onnxruntime_on_the_gpu(tiny_export, reference):
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider (bash scripts/setup.sh gpu)")
    import xclip_engine as xe

    model = xe.load(tiny_export.folder, backend="onnxruntime", device="cuda", precision="fp32")
    info = model.net.describe()
    assert info["providers"][0] == CUDA
    for role in ("text", "video"):
        assert info[role]["fusion"] == "on", info[role]
        assert info[role]["fused"].get("SkipLayerNormalization", 0) > 0     # the GPU recipe
    px = torch.randn(2, 4, 3, 32, 32)
    assert_close(model.logits(px, LABELS).cpu(), reference.logits(px, LABELS), rtol=1e-4, name="logits, CUDA")


# ---------------------------------------------------------------- TensorRT: the device guard


class _FakeCuda:
    """torch.cuda as trt_runner uses it, with one GPU per index and a current device that guards switch."""

    def __init__(self):
        self.current = 0

    def is_available(self):
        return True

    def current_device(self):
        return self.current

    @contextlib.contextmanager
    def device(self, dev):
        before = self.current
        index = torch.device(dev).index
        self.current = before if index is None else index
        try:
            yield
        finally:
            self.current = before

    def Stream(self, device=None):  # noqa: N802 - torch's name
        return _FakeStream(self, torch.device(device).index, default=False)

    def current_stream(self, device=None):
        return _FakeStream(self, torch.device(device).index, default=True)


class _FakeStream:
    def __init__(self, cuda, index, default):
        self.cuda, self.index = cuda, index
        self.cuda_stream = 0 if default else 1000 + index    # 0: the default stream

    def wait_stream(self, other):
        log.append(("wait_stream", self.cuda.current, (self.index, other.index)))

    def synchronize(self):
        log.append(("synchronize", self.cuda.current, self.index))


class _FakeTensor:
    def __init__(self, shape, device):
        self.shape, self.device = tuple(shape), device

    def to(self, device, dtype=None):
        log.append(("to", cuda.current, torch.device(device).index))
        return _FakeTensor(self.shape, torch.device(device))

    def contiguous(self):
        return self

    def data_ptr(self):
        return id(self)


class _FakeTorch:
    """trt_runner's view of torch: the real module but for torch.cuda and torch.empty."""

    def __init__(self, fake_cuda):
        self.cuda = fake_cuda

    def empty(self, shape, dtype=None, device=None):
        log.append(("empty", self.cuda.current, torch.device(device).index))
        return _FakeTensor(shape, torch.device(device))

    def __getattr__(self, name):
        return getattr(torch, name)


log: list = []
cuda = _FakeCuda()


def _fake_trt():
    """The part of the TensorRT 10/11 Python API that trt_runner calls; each call logs the current device."""

    def rec(what):
        log.append((what, cuda.current, None))

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def set_input_shape(self, name, shape):
            rec("set_input_shape")
            self.shape = shape

        def set_tensor_address(self, name, ptr):
            rec("set_tensor_address")

        def get_tensor_shape(self, name):
            rec("get_tensor_shape")
            return (self.shape[0], 8)

        def execute_async_v3(self, stream):
            log.append(("execute_async_v3", cuda.current, stream))
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input_ids", "text_features")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input_ids" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.int64 if name == "input_ids" else trt.float16

        def create_execution_context(self):
            rec("create_execution_context")
            return Context()

    class Runtime:
        def __init__(self, logger):
            rec("Runtime")

        def deserialize_cuda_engine(self, data):
            rec("deserialize_cuda_engine")
            return Engine()

    class Builder:
        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None,
                                         add_optimization_profile=lambda p: None)

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return b"plan"

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec("parse_from_file")
            return True

    trt = types.SimpleNamespace(
        __version__="10.99.0", Logger=Logger, Runtime=Runtime, Builder=Builder, OnnxParser=OnnxParser,
        TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        float32="f32", float16="f16", int32="i32", int64="i64", bool="b")
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake tensorrt module and torch.cuda with GPUs 0 and 1; device 0 current, as torch leaves it."""
    log.clear()
    cuda.current = 0
    trt = _fake_trt()
    monkeypatch.setattr(trt_runner, "torch", _FakeTorch(cuda))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _devices(entries):
    return {(what, current) for what, current, _ in entries}


def test_engine_on_cuda1_loads_and_runs_with_cuda1_current(fake_gpu, tmp_path):
    plan = tmp_path / "text.fp16.plan"
    plan.write_bytes(b"plan")
    engine = trt_runner._Engine(fake_gpu, str(plan), torch.device("cuda:1"))
    assert cuda.current == 0                                   # the guard is left as it was found
    assert _devices(log) >= {("Runtime", 1), ("deserialize_cuda_engine", 1), ("create_execution_context", 1)}
    log.clear()
    (out,) = engine(input_ids=_FakeTensor((3, 8), torch.device("cpu")))
    assert out.shape == (3, 8) and out.device == torch.device("cuda:1")
    calls = [what for what, _, _ in log]
    for what in ("to", "set_input_shape", "set_tensor_address", "get_tensor_shape", "empty", "wait_stream",
                 "execute_async_v3", "synchronize"):
        assert what in calls, (what, calls)
    assert all(current == 1 for _, current, _ in log), log    # every call with cuda:1 current
    assert ("to", 1, 1) in log and ("empty", 1, 1) in log       # input and output tensors on cuda:1
    (stream,) = [s for what, _, s in log if what == "execute_async_v3"]
    assert stream == 1001                                       # the engine's own stream of cuda:1, not the default
    assert ("wait_stream", 1, (1, 1)) in log                    # after the copies on torch's current stream
    assert cuda.current == 0


def test_trtnet_on_bare_cuda_pins_the_current_device(fake_gpu, tmp_path):
    # "cuda" means the current device when the model is loaded; the engines are bound to it, so the
    # runner keeps that index even if the caller switches devices later
    for role in ("text", "video"):
        (tmp_path / f"{role}.fp16.plan").write_bytes(b"plan")
    manifest = _plan_manifest(fake_gpu, tmp_path)
    cuda.current = 1
    net = trt_runner.TrtNet(manifest, "cuda")
    assert net.device == torch.device("cuda:1") and net.text.device == torch.device("cuda:1")
    assert ("deserialize_cuda_engine", 1) in _devices(log)
    cuda.current = 0
    net2 = trt_runner.TrtNet(manifest, "cuda:1")
    assert net2.video.device == torch.device("cuda:1")
    assert all(current == 1 for what, current, _ in log if what == "deserialize_cuda_engine")


def _plan_manifest(fake_gpu, folder):
    from xclip_engine.export.manifest import file_entry

    return types.SimpleNamespace(
        folder=str(folder), config=None,
        tensorrt={"max_batch": 4, "max_labels": 16, "tensorrt_version": fake_gpu.__version__,
                  "text": file_entry(str(folder), "text.fp16.plan"),
                  "video": file_entry(str(folder), "video.fp16.plan")})


def test_trtnet_refuses_an_altered_plan(fake_gpu, tmp_path):
    from xclip_engine.export.manifest import ExportFolderError

    for role in ("text", "video"):
        (tmp_path / f"{role}.fp16.plan").write_bytes(b"plan")
    manifest = _plan_manifest(fake_gpu, tmp_path)
    (tmp_path / "video.fp16.plan").write_bytes(b"PLAN")          # same size, other content
    with pytest.raises(ExportFolderError, match=r"video\.fp16\.plan: its sha256 is .*TensorRT video engine"):
        trt_runner.TrtNet(manifest, "cuda:1")
    assert not any(what == "deserialize_cuda_engine" for what, _, _ in log)


def test_build_engine_builds_on_the_asked_device(fake_gpu, tmp_path):
    plan = tmp_path / "video.fp16.plan"
    trt_runner.build_engine(str(tmp_path / "video.fp16.onnx"), str(plan), {"x": ((1,), (2,), (3,))}, device="cuda:1")
    assert plan.read_bytes() == b"plan"
    assert _devices(log) >= {("Builder", 1), ("parse_from_file", 1), ("build_serialized_network", 1)}
    assert cuda.current == 0


# ---------------------------------------------------------------- packaging: setup.py's gpu extra


def _extras() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_gpu_extra_is_cuda12_throughout():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    reqs = {canonicalize_name(r.name): r for r in map(Requirement, _extras()["gpu"])}
    # the bare tensorrt resolves to TensorRT 11 with tensorrt-cu13 (CUDA 13); onnxruntime (CPU) would
    # shadow onnxruntime-gpu's module
    assert "tensorrt" not in reqs and "onnxruntime" not in reqs
    assert not any(name.startswith("tensorrt-cu13") for name in reqs)
    trt = reqs["tensorrt-cu12"]
    assert trt.specifier.contains("10.16.1.11") and trt.specifier.contains("11.4.0.106")
    assert not trt.specifier.contains("12.0.0")
    ort = reqs["onnxruntime-gpu"]
    # PyPI's onnxruntime-gpu is a CUDA 12 build up to 1.26 and a CUDA 13 build from 1.27 on
    assert ort.specifier.contains("1.26.0") and not ort.specifier.contains("1.27.0")
    assert "nvidia-dali-cuda120" in reqs


# ---------------------------------------------------------------- scripts/setup.sh


def _fake_bin(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _check_torch(tmp_path, gpu: bool, torch_report: str):
    """Run setup.sh's check_torch_cuda with a fake nvidia-smi and a fake python printing `torch_report`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _fake_bin(bin_dir, "nvidia-smi", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'" if gpu else "exit 9")
    py = _fake_bin(tmp_path, "python", f"echo '{torch_report}'")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("XCLIP_ALLOW_CPU_TORCH", None)
    return subprocess.run(["bash", "-c", f'source scripts/setup.sh && check_torch_cuda "{py}"'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_setup_script_parses():
    r = subprocess.run(["bash", "-n", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_setup_script_refuses_unknown_arguments():
    r = subprocess.run(["bash", "scripts/setup.sh", "gpus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def test_cpu_torch_on_a_gpu_machine_stops_setup(tmp_path):
    r = _check_torch(tmp_path, gpu=True, torch_report="2.13.0+cpu None False")
    assert r.returncode == 1
    assert "CPU-only build" in r.stderr
    assert "--index-url https://download.pytorch.org/whl/cu128" in r.stderr and "torch==2.13.0+cu128" in r.stderr


def test_cuda_torch_that_sees_no_gpu_stops_setup(tmp_path):
    r = _check_torch(tmp_path, gpu=True, torch_report="2.13.0+cu128 12.8 False")
    assert r.returncode == 1 and "does not see the GPU" in r.stderr


def test_cuda12_torch_on_a_gpu_machine_passes(tmp_path):
    r = _check_torch(tmp_path, gpu=True, torch_report="2.13.0+cu128 12.8 True")
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr


def test_cuda13_torch_passes_with_a_warning(tmp_path):
    r = _check_torch(tmp_path, gpu=True, torch_report="2.13.0+cu130 13.0 True")
    assert r.returncode == 0 and "WARNING" in r.stderr and "CUDA 12" in r.stderr


def test_no_gpu_no_check(tmp_path):
    # CI and this project's CPU machines: a CPU torch is what they should have
    r = _check_torch(tmp_path, gpu=False, torch_report="2.13.0+cpu None False")
    assert r.returncode == 0 and r.stderr == ""


FAKE_VENV_PYTHON = r'''#!/bin/sh
# a venv's python that installs nothing: it logs each call and answers what setup.sh asks
echo "$*" >> "$CALLS"
case "$*" in
  *torch.cuda.is_available*) echo "2.13.0+cu128 12.8 True" ;;
  *'print("torch"'*) echo "torch 2.13.0+cpu" ;;
  "-m pip show -q onnxruntime") exit 0 ;;
  "-m pip show -q tensorrt"*) exit 1 ;;
esac
'''


@pytest.mark.parametrize("args, gpu, want", [
    ([], False, ["-m pip install -q -e ."]),
    (["dev"], False, ["-m pip install -q -e .[dev]"]),
    (["gpu"], True, ["-m pip uninstall -y -q onnxruntime onnxruntime-gpu",
                     "-m pip install -q --extra-index-url https://pypi.nvidia.com -e .[gpu]"]),
    (["dev", "gpu"], True, ["-m pip install -q -e .[dev]", "-m pip uninstall -y -q onnxruntime onnxruntime-gpu",
                            "-m pip install -q --extra-index-url https://pypi.nvidia.com -e .[gpu]"]),
])
def test_setup_script_installs(tmp_path, args, gpu, want):
    # the pip commands each form of the script runs, in a fake venv (nothing is installed)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _fake_bin(venv / "bin", "python", FAKE_VENV_PYTHON)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "nvidia-smi", "echo 'GPU 0: NVIDIA H200'" if gpu else "exit 9")
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "XCLIP_VENV": str(venv), "CALLS": str(calls)}
    r = subprocess.run(["bash", "scripts/setup.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "setup: done (torch 2.13.0+cpu)" in r.stderr
    pip = [c for c in calls.read_text().splitlines() if c.startswith("-m pip") and " show " not in c
           and "--upgrade pip" not in c]
    assert pip == want
    assert any("torch.cuda.is_available" in c for c in calls.read_text().splitlines()) == gpu
