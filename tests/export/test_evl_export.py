"""EVL through every export path: the ONNX video graph (fp32, fp16, int8) with its check, the manifest,
ONNX Runtime, backend auto on the folder, the CLI, and TensorRT's code path with fakes.

The tiny model is EVL_TINY (4 x 4 patch grid, head width 16, 4 frames, 5 classes) with weights
scaled so every branch counts (conftest.py `scaled_evl`: the temporal terms and the adjacent-frame
tables are nonzero), exported once per session (`evl_export`). Every output is judged by the
yardstick (engine/runtime/yardstick.py): error against a float64 run of the reference model within
4x the reference's own error in the same precision, plus top-1 on clear rows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import types

import numpy as np
import onnx
import pytest
import torch
from evl_factory import scaled_evl

import xclip_engine as xe
from xclip_engine.engine.config import EVL_TINY, EVLConfig, config_from_dict, evl_preprocessing, get_config
from xclip_engine.engine.model.ops import REFERENCE
from xclip_engine.engine.runtime.yardstick import float64_copy, judge
from xclip_engine.export import checks
from xclip_engine.export.graphs import EXPORT_OPS
from xclip_engine.export.manifest import FORMAT_VERSION, file_entry, read_manifest
from xclip_engine.export.onnx_export import export_model


def _pixels(config, batch, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_frames, 3, config.image_size, config.image_size, generator=g)


def _exact(model, px):
    with torch.inference_mode():
        exact = float64_copy(model)
        video64 = exact.encode_video(px.double())
        return exact.logits_from_features(video64), video64


# ---------------------------------------------------------------- the adjacent-frame op's export form


@pytest.mark.parametrize("grid, frames, dtype", [(4, 4, torch.float32), (3, 1, torch.float32), (5, 2, torch.float64),
                                                 (14, 3, torch.float32), (4, 3, torch.bfloat16)])
def test_export_form_of_the_adjacent_frame_op_is_bitwise_the_reference(grid, frames, dtype):
    # gather into the relative offsets instead of scatter, pads instead of in-place slice adds: the
    # same values summed in the same order
    g = torch.Generator().manual_seed(grid)
    seq, heads, dh, width = grid * grid + 1, 2, 8, 12
    q, k = (torch.randn(2, frames, seq, heads, dh, generator=g).to(dtype) for _ in range(2))
    w_prev, w_next = (torch.randn((2 * grid - 1) ** 2, width, generator=g) for _ in range(2))
    want = REFERENCE.adjacent_frame_feature(q, k, w_prev, w_next, grid)
    got = EXPORT_OPS.adjacent_frame_feature(q, k, w_prev, w_next, grid)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_video_graph_gathers_and_never_scatters(evl_export):
    graph = onnx.load(os.path.join(evl_export.folder, "video.fp32.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert "GatherElements" in ops
    assert not ops & {"ScatterElements", "ScatterND"}, ops


# ---------------------------------------------------------------- the folder and its check


def test_folder_and_manifest(evl_export, evl_reference, evl_labels):
    folder = evl_export.folder
    names = set(os.listdir(folder))
    assert {"video.fp32.onnx", "video.fp16.onnx", "video.int8.onnx", "manifest.json"} <= names
    assert not names & {"text.fp32.onnx", "vocab.json", "merges.txt"}      # no text tower, no vocabulary
    raw = json.loads(open(os.path.join(folder, "manifest.json")).read())
    assert raw["format_version"] == FORMAT_VERSION and raw["family"] == "evl"
    assert raw["config"] == EVL_TINY.to_dict() and raw["num_classes"] == 5
    assert raw["labels"] == evl_labels
    assert raw["preprocessing"] == evl_preprocessing(EVL_TINY)
    assert raw["inputs"] == {"video": ["pixel_values"]}
    assert raw["outputs"] == {"video": ["logits", "video_embeds"]}
    m = read_manifest(folder)                        # the config rebuilt through config_from_dict(family=...)
    assert isinstance(m.config, EVLConfig) and m.config == evl_reference.config
    assert m.config == config_from_dict(raw["config"], "evl")
    assert m.family == "evl" and m.roles == ("video",) and m.precisions() == ["fp32", "fp16", "int8"]
    for p in m.precisions():
        onnx.checker.check_model(m.path("video", p))


def test_manifest_family_decides_the_config_class(evl_export, tmp_path):
    from xclip_engine.export.manifest import ExportFolderError

    folder = tmp_path / "copy"
    shutil.copytree(evl_export.folder, folder, ignore=shutil.ignore_patterns("cache"))
    data = json.loads((folder / "manifest.json").read_text())
    for family, match in (("videomae", "family 'videomae'"), ("xclip", "unknown X-CLIP config fields")):
        (folder / "manifest.json").write_text(json.dumps({**data, "family": family}))
        with pytest.raises(ExportFolderError, match=match):
            read_manifest(folder)


def test_video_graph_has_a_dynamic_batch(evl_export):
    graph = onnx.load(os.path.join(evl_export.folder, "video.fp32.onnx"), load_external_data=False)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    (px,) = graph.graph.input
    assert px.name == "pixel_values" and isinstance(dims(px)[0], str) and dims(px)[1:] == [4, 3, 32, 32]
    logits, video = graph.graph.output
    assert (logits.name, video.name) == ("logits", "video_embeds")
    assert isinstance(dims(logits)[0], str) and dims(logits)[1] == 5 and dims(video)[1] == 32


def test_check_judges_every_precision_and_prints_the_table(evl_export):
    rows = {r.file: r for r in evl_export.rows if "OpenVINO" not in r.precision}   # OpenVINO's: test_openvino.py
    assert set(rows) == {"video.fp32.onnx", "video.fp16.onnx", "video.int8.onnx"}
    assert evl_export.ok and rows["video.fp32.onnx"].ok and rows["video.fp16.onnx"].ok
    for row in rows.values():
        assert [v.name for v in row.verdicts] == ["logits", "video"]
        for v in row.verdicts:
            assert np.isfinite(v.error), v
            if row.precision != "int8":
                assert v.error <= v.bound and v.ref_error > 0, v      # the yardstick
        logits = row.verdicts[0]
        assert logits.top1[1] > 0 or row.precision == "int8", logits  # top-1 judged on clear rows
    # int8 is judged (5% of the range, top-1) and its verdict recorded, pass or fail, on random weights
    int8 = rows["video.int8.onnx"]
    printed = "\n".join(evl_export.log)
    assert "ref's own" in printed and "video.int8.onnx" in printed and "float64" in printed
    assert "text.fp32.onnx" not in printed
    saved = {c["file"]: c for c in json.loads(open(os.path.join(evl_export.folder, "manifest.json")).read())["checks"]
             if "OpenVINO" not in c["precision"]}
    assert set(saved) == set(rows) and saved["video.int8.onnx"]["ok"] == int8.ok
    assert set(saved["video.fp32.onnx"]["outputs"]) == {"logits", "video"}


def test_onnxruntime_matches_the_reference_by_the_yardstick(evl_export, evl_reference):
    runtime = xe.load(evl_export.folder, backend="onnxruntime", device="cpu")
    px = _pixels(EVL_TINY, 3, seed=5)                    # another batch size than the export's: dynamic B
    logits64, video64 = _exact(evl_reference, px)
    with torch.inference_mode():
        ref_video = evl_reference.encode_video(px)
        ref_logits = evl_reference.logits_from_features(ref_video)
    verdicts = [judge("logits", runtime.net(px), logits64, ref_logits, classes=True),
                judge("video features", runtime.net.encode_video(px), video64, ref_video)]
    for v in verdicts:
        print(v.row())
    assert all(v.ok for v in verdicts), "\n".join(v.row() for v in verdicts)
    assert verdicts[0].top1[1] >= 1
    info = runtime.net.describe()
    assert info["video"]["fusion"] == "on" and "text" not in info


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_lower_precisions_load_and_run(evl_export, evl_reference, precision):
    runtime = xe.load(evl_export.folder, backend="onnxruntime", device="cpu", precision=precision)
    px = _pixels(EVL_TINY, 2, seed=6)
    logits = runtime.net(px)
    with torch.inference_mode():
        ref = evl_reference(px)
    assert logits.shape == ref.shape and torch.isfinite(logits).all()
    err = float((logits - ref).abs().max() / ref.abs().max())
    assert 0 < err < 0.1, err                             # really another precision, and close


def test_export_folder_loads_back_and_classifies(evl_export, evl_reference, evl_labels):
    model = xe.load(evl_export.folder, backend="onnxruntime", device="cpu")
    net = model.net
    assert isinstance(model.config, EVLConfig) and model.config == evl_reference.config
    assert model.labels == evl_labels and model.num_frames == 4 and model.image_size == 32
    px = _pixels(EVL_TINY, 4, seed=7)
    logits = net(px)
    assert logits.shape == (4, 5) and net.encode_video(px).shape == (4, 32)
    with torch.inference_mode():
        want = evl_reference(px)
    top = [model.labels[i] for i in logits.argmax(-1).tolist()]
    assert top == [evl_labels[i] for i in want.argmax(-1).tolist()]
    with pytest.raises(NotImplementedError, match="no text tower"):
        net.encode_text(torch.zeros(1, 77, dtype=torch.long))
    with pytest.raises(TypeError, match="pixel values only"):
        net(px, torch.zeros(3, 32))


def test_export_folder_classifies_video_files(evl_export, evl_labels, tmp_path):
    from video_factory import write_index_video

    model = xe.load(evl_export.folder, backend="onnxruntime", device="cpu")
    px = _pixels(EVL_TINY, 2, seed=4)
    assert torch.equal(model.logits(px), model.net(px))        # Model's EVL call is the graph's
    video = write_index_video(tmp_path / "clip.mp4", 40, size=(64, 48))
    (pred,) = model.classify([video], topk=3)
    assert pred.error is None, pred.error
    assert len(pred.top) == 3 and all(label in evl_labels for label, _ in pred.top)


def test_a_perturbed_weight_fails_the_check(evl_export, evl_reference, tmp_path):
    """One weight of the fp32 graph changed (the largest backbone matrix; then an adjacent-frame
    table): the check fails, by far, and the table names the file."""
    from onnx import numpy_helper

    px = _pixels(EVL_TINY, 2, seed=0)
    refs = checks.yardstick(evl_reference, None, px, ["fp32"])
    g = EVL_TINY.grid
    pickers = {"backbone": lambda inits: max(inits, key=lambda t: int(np.prod(t.dims))),
               "adjacent-frame table": lambda inits: next(t for t in inits if list(t.dims) == [(2 * g - 1) ** 2, 32]
                                                          and "w_prev" in t.name)}
    for what, pick in pickers.items():
        folder = tmp_path / what.replace(" ", "-")
        shutil.copytree(evl_export.folder, folder, ignore=shutil.ignore_patterns("cache"))
        path = folder / "video.fp32.onnx"
        graph = onnx.load(str(path))
        init = pick(list(graph.graph.initializer))
        w = numpy_helper.to_array(init).copy()
        w.flat[w.size // 2] += 0.5 * float(np.abs(w).max())
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(graph, str(path))
        data = json.loads((folder / "manifest.json").read_text())
        data["graphs"]["video"]["fp32"] = file_entry(str(folder), "video.fp32.onnx")   # vouches for it as written
        (folder / "manifest.json").write_text(json.dumps(data))
        (row,) = checks.check_precision(read_manifest(folder), "fp32", refs, None, px)
        assert not row.ok and row.worst.error > 10 * row.worst.bound, (what, row.worst)
        table = checks.format_table([row])
        assert "FAIL" in table and "video.fp32.onnx" in table


def test_auto_on_the_export_folder_measures_its_checked_precisions(evl_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    m = xe.load(evl_export.folder, backend="auto", device="cpu")
    paths = {p.name: p for p in m.choice.paths}
    fp32 = paths["onnxruntime fp32"]
    assert fp32.available and fp32.verified and fp32.seconds > 0
    int8 = paths["onnxruntime int8"]
    if int8.available:                                 # its export check passed: timed and compared here
        assert int8.seconds > 0 and int8.verified == (int8.error <= int8.bound)
    best = min((p for p in paths.values() if p.verified and p.seconds), key=lambda p: p.seconds)
    assert (m.backend, m.choice.precision) == (best.backend, best.precision) and m.net.precision == m.choice.precision
    assert isinstance(m.config, EVLConfig)


# ---------------------------------------------------------------- the core and the CLI


def test_export_core_takes_an_in_memory_model_and_checks_the_label_count(evl_reference, tmp_path):
    with pytest.raises(ValueError, match="5 classes"):
        export_model(model=evl_reference, out=str(tmp_path / "x"), labels=["a", "b"], echo=lambda m: None)


def test_cli_exports_an_evl_registry_name(tmp_path):
    from click.testing import CliRunner

    from xclip_engine.export.cli import export_cmd

    out = tmp_path / "evl"
    r = CliRunner().invoke(export_cmd, ["--model", "evl-tiny-test", "--random-init", "--fp16", "--int8",
                                        "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "ref's own" in r.output and "video.int8.onnx" in r.output
    m = read_manifest(out)
    assert m.family == "evl" and m.config == get_config("evl-tiny-test")
    assert m.raw["source"]["kind"] == "random" and m.precisions() == ["fp32", "fp16", "int8"]
    runtime = xe.load(str(out), backend="onnxruntime", device="cpu")
    assert runtime.net(_pixels(m.config, 2, seed=1)).shape == (2, 5)


# ---------------------------------------------------------------- TensorRT: the same code, faked engines


class _OrtEngine:
    """trt_runner._Engine's interface, running the plan (here: a copy of the fp16 ONNX graph) in ONNX
    Runtime on the CPU, so that the runner's EVL path, its batch split and the engine check run for real."""

    calls: list = []

    def __init__(self, trt, path, device):
        import onnxruntime as ort

        self.device = torch.device(device)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, **feeds):
        assert list(feeds) == self.inputs, (list(feeds), self.inputs)
        _OrtEngine.calls.append({k: tuple(v.shape) for k, v in feeds.items()})
        outs = self.session.run(None, {k: v.cpu().numpy().astype(np.float32) for k, v in feeds.items()})
        return [torch.from_numpy(o).half() for o in outs]      # an fp16 engine's outputs


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """require_tensorrt, build_engine and _Engine of trt_runner faked; records what was built."""
    from xclip_engine.export import trt_runner

    built = []
    fake = types.SimpleNamespace(__version__="10.99.0")

    def build_engine(onnx_path, plan_path, profile, workspace_gib=4.0, device=None):
        built.append((os.path.basename(onnx_path), profile))
        shutil.copyfile(onnx_path, plan_path)

    monkeypatch.setattr(trt_runner, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_runner, "build_engine", build_engine)
    monkeypatch.setattr(trt_runner, "_Engine", _OrtEngine)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    _OrtEngine.calls = []
    return built


def test_tensorrt_path_builds_checks_and_runs_the_one_video_engine(fake_tensorrt, evl_reference, tmp_path):
    out = tmp_path / "trt"
    result = export_model(model=evl_reference, out=str(out), tensorrt=True, max_batch=2, echo=lambda m: None)
    # one engine, from the fp16 video graph, with a profile over B alone
    ((source, profile),) = fake_tensorrt
    t, s = EVL_TINY.num_frames, EVL_TINY.image_size
    assert source == "video.fp16.onnx"
    assert profile == {"pixel_values": ((1, t, 3, s, s), (2, t, 3, s, s), (2, t, 3, s, s))}
    engine_rows = [r for r in result.rows if r.precision == "fp16 TensorRT"]
    assert [r.file for r in engine_rows] == ["video.fp16.plan"] and engine_rows[0].ok, result.table
    m = read_manifest(out)
    assert set(m.tensorrt) >= {"video", "max_batch"} and "text" not in m.tensorrt
    # loaded like any TensorRT folder: calls beyond the profile's batch are split
    model = xe.load(str(out), backend="tensorrt", device="cuda:0")
    _OrtEngine.calls = []
    px = _pixels(EVL_TINY, 5, seed=8)
    logits, features = model.net(px), model.net.encode_video(px)
    assert [c["pixel_values"][0] for c in _OrtEngine.calls] == [2, 2, 1] * 2
    assert logits.dtype == torch.float32 and logits.shape == (5, 5) and features.shape == (5, 32)
    logits64, _ = _exact(evl_reference, px)
    with torch.inference_mode():
        half = float64_copy(evl_reference).half()
        logits16 = half(px.half()).float()
    v = judge("TensorRT (faked) logits", logits, logits64, logits16, "fp16", classes=True)
    assert v.ok, v.row()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (TensorRT builds and runs engines on one)")
def test_tensorrt_on_a_gpu(evl_reference, tmp_path):
    pytest.importorskip("tensorrt", reason="needs the tensorrt package (pip install 'xclip-engine[gpu]')")
    out = tmp_path / "trt"
    result = export_model(model=evl_reference, out=str(out), tensorrt=True, max_batch=4, echo=lambda m: None)
    assert all(r.ok for r in result.rows if r.precision == "fp16 TensorRT"), result.table
    model = xe.load(str(out), backend="tensorrt", device="cuda")
    px = _pixels(EVL_TINY, 6, seed=9)
    logits64, _ = _exact(evl_reference, px)
    with torch.inference_mode():
        half = float64_copy(evl_reference).half().cuda()
        logits16 = half(px.half().cuda()).float().cpu()
    v = judge("TensorRT logits", model.net(px).cpu(), logits64, logits16, "fp16", classes=True)
    assert v.ok, v.row()


# ---------------------------------------------------------------- full size


def test_full_size_b16_export_passes_its_check(tmp_path):
    """EVL B/16 at its real shapes (224 px, 8 frames, g = 14, head width 64, 12 x 768 backbone, 4
    decoder layers, 400 classes), random init with every branch counting: the fp32 graph passes the
    export check (batch 1) on this CPU, logits (top-1) and features within the yardstick, as the B/32
    X-CLIP export does in tests/parity/test_export_parity.py. Export + check took 59-87 s on 2 shared
    cores (load average ~6) and 219 s under a load average of ~12 (82 s of CPU time)."""
    config = get_config("evl-b16-8f")
    assert (config.grid, config.width // config.heads, config.image_size, config.num_frames) == (14, 64, 224, 8)
    model = scaled_evl(config)
    t0 = time.perf_counter()
    result = export_model(model=model, out=str(tmp_path / "evl"), check_batch=1, echo=lambda m: None)
    print(f"\nB/16 EVL export + check: {time.perf_counter() - t0:.0f} s\n{result.table}")
    fp32 = [r for r in result.rows if r.precision == "fp32"]     # (+ a bf16 OpenVINO row where installed)
    assert result.ok and [r.file for r in fp32] == ["video.fp32.onnx"]
    logits, video = fp32[0].verdicts
    assert logits.ok and video.ok and logits.top1 == (1, 1), result.table
