"""backend "openvino" (export/ov_runner.py): an export folder's graphs compiled by OpenVINO on the CPU,
fp32 / bf16 / int8, judged by the same yardstick as ONNX Runtime's; its export check rows; backend auto."""

import os
import sys

import pytest

pytest.importorskip("openvino")

import torch  # noqa: E402
from helpers import assert_classifies_like  # noqa: E402
from video_factory import write_index_video  # noqa: E402

import xclip_engine as xe  # noqa: E402
from xclip_engine.engine.runtime import choice as ch  # noqa: E402
from xclip_engine.engine.runtime import export_choice as ec  # noqa: E402
from xclip_engine.engine.runtime.yardstick import rel_error, top1_agreement  # noqa: E402
from xclip_engine.export import checks, ov_runner  # noqa: E402
from xclip_engine.export.manifest import ExportFolderError, read_manifest  # noqa: E402
from xclip_engine.export.ort_runner import OrtNet  # noqa: E402
from xclip_engine.export.ov_runner import OpenVINOUnavailable, OvNet  # noqa: E402

LABELS = ["abseiling", "air drumming", "playing guitar", "surfing water", "yoga"]
INSTALL = "pip install 'xclip-engine[openvino]'"


@pytest.fixture(scope="module")
def sample(reference):
    """The yardstick of the export check on 3 videos x 5 labels: float64 and fp32 reference outputs."""
    ids, px = checks.sample_inputs(reference.config, reference.tokenizer, LABELS, batch=3, seed=11)
    return ids, px, checks.yardstick(reference.net, ids, px, ["fp32"])


@pytest.fixture(scope="module")
def manifest(tiny_export):
    return read_manifest(tiny_export.folder)


def _verdicts(net, ids, px, refs, precision):
    return checks.judge_outputs(checks.runtime_outputs(net, ids, px), refs, precision)


def test_fp32_agrees_with_onnxruntime_within_the_fp32_yardstick(manifest, sample):
    ids, px, refs = sample
    ov, ort = OvNet(manifest, "fp32", "cpu"), OrtNet(manifest, "fp32", "cpu")
    got = _verdicts(ov, ids, px, refs, "fp32")
    assert all(v.ok for v in got.values()), "\n".join(v.row() for v in got.values())
    assert got["logits"].top1[1] > 0
    # and the two runtimes agree with each other within that same bound
    ort_out = checks.runtime_outputs(ort, ids, px)
    ov_out = checks.runtime_outputs(ov, ids, px)
    for key, v in got.items():
        assert rel_error(ov_out[key], ort_out[key]) <= v.bound, key
    info = ov.describe()
    # f32 asked for explicitly: OpenVINO's default on a bf16-capable CPU is bf16
    assert info["backend"] == "openvino" and info["inference_precision"] == "f32"
    assert info["video"]["inference_precision"] == "f32" and info["video"]["threads"] == torch.get_num_threads()
    assert info["video"]["cache_dir"] == os.path.join(manifest.folder, "cache", "openvino")
    with pytest.raises(NotImplementedError, match="visual tokens"):
        ov.video_features(px)


def test_a_second_load_comes_from_openvinos_cache(export_copy):
    first = OvNet(read_manifest(export_copy), "fp32", "cpu")
    assert first.video.info["loaded_from_cache"] is False
    assert os.listdir(export_copy / "cache" / "openvino")
    again = OvNet(read_manifest(export_copy), "fp32", "cpu")
    assert again.video.info["loaded_from_cache"] is True


def test_bf16_within_the_bf16_yardstick(manifest, sample, reference):
    if not ov_runner.bf16_capable():
        pytest.skip("OpenVINO runs no bf16 on this CPU")
    ids, px, refs = sample
    refs = {**refs, "bf16": checks.bf16_reference(reference.net, ids, px)}
    net = OvNet(manifest, "bf16", "cpu")
    assert net.video.info["source"] == "video.fp32.onnx" and net.video.info["inference_precision"] == "bf16"
    got = _verdicts(net, ids, px, refs, "bf16")
    assert all(v.ok for v in got.values()), "\n".join(v.row() for v in got.values())
    logits = got["logits"]
    assert logits.top1[1] > 0 and logits.top1[0] == logits.top1[1]
    assert logits.error > 1e-4            # really bf16, not the fp32 graph run in f32


def test_bf16_is_refused_where_the_cpu_has_none(manifest, monkeypatch):
    monkeypatch.setattr(ov_runner, "bf16_capable", lambda: False)
    with pytest.raises(OpenVINOUnavailable, match="bf16 support.*'fp32' or 'int8'"):
        OvNet(manifest, "bf16", "cpu")
    assert ov_runner.inference_hint("int8") == "f32"


def test_int8_runs_and_agrees_with_fp32_on_the_clear_rows(manifest, sample):
    ids, px, _ = sample
    fp32, int8 = OvNet(manifest, "fp32", "cpu"), OvNet(manifest, "int8", "cpu")
    assert int8.video.info["source"] == "video.int8.onnx"
    text = fp32.encode_text(ids)
    want, got = fp32(px, text), int8(px, text)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert 0 < rel_error(got, want) < checks.INT8_BOUND
    agree, clear = top1_agreement(got, want, 2 * checks.INT8_BOUND * float(want.abs().max()))
    assert agree == clear, (agree, clear)


def test_the_export_check_has_openvino_rows(tiny_export):
    rows = [r for r in tiny_export.rows if r.precision.endswith("OpenVINO")]
    labels = {r.precision for r in rows}
    assert "int8 OpenVINO" in labels
    assert ("bf16 OpenVINO" in labels) == ov_runner.bf16_capable()
    for r in rows:
        assert r.note.startswith("OpenVINO") and all(v.bound > 0 for v in r.verdicts), r
    bf16 = [r for r in rows if r.precision == "bf16 OpenVINO"]
    assert all(r.ok and r.file.endswith(".fp32.onnx") for r in bf16), checks.format_table(bf16)
    assert all(v.ref_error > 0 for r in bf16 for v in r.verdicts)    # judged by autocast bf16's own error
    verdicts = ec._export_verdicts(read_manifest(tiny_export.folder).raw)
    assert "int8 OpenVINO" in verdicts and verdicts["int8 OpenVINO"][2] == checks.INT8_BOUND
    printed = "\n".join(tiny_export.log)
    assert "int8 OpenVINO" in printed and "in OpenVINO" in printed


def test_evl_export_runs_on_openvino(evl_export, evl_reference):
    m = read_manifest(evl_export.folder)
    _, px = checks.sample_inputs(evl_reference.config, None, None, batch=2, seed=3)
    refs = checks.yardstick(evl_reference, None, px, ["fp32"])
    net = OvNet(m, "fp32", "cpu")
    assert net.text is None and "text" not in net.describe()
    got = _verdicts(net, None, px, refs, "fp32")
    assert set(got) == {"logits", "video"} and all(v.ok for v in got.values()), [v.row() for v in got.values()]
    model = xe.load(evl_export.folder, backend="openvino", precision="int8")
    logits = model.logits(px)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all() and model.net.video.info["source"] == \
        "video.int8.onnx"


def test_load_gives_a_model_that_classifies(tiny_export, reference, tmp_path):
    m = xe.load(tiny_export.folder, backend="openvino")      # no device: the CPU, even on a GPU machine
    assert m.backend == "openvino" and m.kind == "export" and m.device.type == "cpu"
    assert m.backend_note == "openvino (fp32)" and isinstance(m.net, OvNet)
    assert_classifies_like(m, reference, tmp_path, LABELS)


def test_auto_lists_openvino_and_takes_a_verified_path(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    m = xe.load(tiny_export.folder, backend="auto", device="cpu")
    paths = {p.name: p for p in m.choice.paths}
    table = m.choice.table()
    for name in ("openvino fp32", "openvino bf16", "openvino int8"):
        assert name in table and name in paths
    fp32 = paths["openvino fp32"]
    assert fp32.available and fp32.verified and fp32.seconds > 0 and fp32.error <= fp32.bound
    for p in paths.values():
        if p.backend == "openvino" and p.available:
            assert p.seconds > 0 and p.verified == (p.error <= p.bound), p
    taken = paths[f"{m.choice.backend} {m.choice.precision}"]
    assert taken.verified and m.backend == taken.backend and m.net.precision == taken.precision


def test_auto_takes_openvino_when_it_measures_fastest(tiny_export, tmp_path, monkeypatch):
    if not ov_runner.bf16_capable():
        pytest.skip("OpenVINO runs no bf16 on this CPU")
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    fastest = lambda fn, *a, **k: 0.1 if isinstance(fn, OvNet) and fn.precision == "bf16" else 1.0  # noqa: E731
    monkeypatch.setattr(ch, "time_call", fastest)
    m = xe.load(tiny_export.folder, backend="auto", device="cpu")
    assert (m.backend, m.net.precision) == ("openvino", "bf16") and isinstance(m.net, OvNet)
    assert "auto: openvino bf16" in m.backend_note
    # precision bf16 asked for: OpenVINO's bf16 is the one path, nothing to measure
    only = xe.load(tiny_export.folder, backend="auto", device="cpu", precision="bf16")
    assert only.backend == "openvino" and only.net.precision == "bf16"


def test_a_changed_openvino_version_measures_again(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    first = ec.choose_for_export(tiny_export.folder, "cpu", echo=None)
    assert not first.cached and ec.choose_for_export(tiny_export.folder, "cpu", echo=None).cached
    monkeypatch.setattr(ec, "_openvino_version", lambda: "9999.0")
    assert not ec.choose_for_export(tiny_export.folder, "cpu", echo=None).cached


def test_candidates_say_why_openvino_cannot_run(tiny_export, monkeypatch):
    raw = read_manifest(tiny_export.folder).raw
    gpu = {p.name: p for p in ec.export_candidates(raw, torch.device("cuda"))}
    assert not gpu["openvino fp32"].available and "CPU" in gpu["openvino fp32"].why
    monkeypatch.setattr(ec, "openvino_bf16", lambda: (False, "no BF16 here"))
    cpu = {p.name: p for p in ec.export_candidates(raw, torch.device("cpu"))}
    assert cpu["openvino fp32"].available and cpu["openvino int8"].available
    assert not cpu["openvino bf16"].available and cpu["openvino bf16"].why == "no BF16 here"
    bf16_only = {p.name: p for p in ec.export_candidates(raw, torch.device("cpu"), precision="bf16")}
    assert not bf16_only["openvino fp32"].available and "precision bf16 asked for" in bf16_only["openvino fp32"].why
    # an export check that failed OpenVINO's int8 keeps auto off it, whatever ONNX Runtime's int8 did
    failed = {**raw, "checks": [dict(r, ok=False) if r["precision"] == "int8 OpenVINO" else r for r in raw["checks"]]}
    paths = {p.name: p for p in ec.export_candidates(failed, torch.device("cpu"))}
    assert not paths["openvino int8"].available and "failed its export check" in paths["openvino int8"].why


def test_a_tampered_graph_is_refused_before_openvino_reads_it(export_copy, monkeypatch):
    path = export_copy / "video.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                   # same size: only the sha256 tells
    path.write_bytes(bytes(data))
    read = []
    real = ov_runner.core()

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def read_model(self, p, *a):
            read.append(os.path.basename(p))
            return real.read_model(p, *a)

    monkeypatch.setattr(ov_runner, "core", lambda: Spy())
    with pytest.raises(ExportFolderError, match=r"video\.fp32\.onnx: its sha256 is .*the manifest says"):
        xe.load(export_copy, backend="openvino")
    assert "video.fp32.onnx" not in read


def test_a_graph_openvino_cannot_read_is_refused_with_its_name(export_copy):
    import json

    from xclip_engine.export.manifest import file_entry

    (export_copy / "video.int8.onnx").write_bytes(b"not a graph" * 100)
    # a manifest that vouches for the garbage: OpenVINO's refusal is the message
    data = json.loads((export_copy / "manifest.json").read_text())
    data["graphs"]["video"]["int8"] = file_entry(str(export_copy), "video.int8.onnx")
    (export_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportFolderError, match=r"video\.int8\.onnx: OpenVINO cannot load this graph.*onnxruntime"):
        xe.load(export_copy, backend="openvino", precision="int8")


def test_cuda_is_refused_with_the_backends_that_run_there(tiny_export):
    with pytest.raises(ValueError, match=r"runs on the CPU.*backend='onnxruntime'.*backend='tensorrt'"):
        xe.load(tiny_export.folder, backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="fp16 graphs are for GPUs"):
        xe.load(tiny_export.folder, backend="openvino", precision="fp16")


def test_a_checkpoint_on_openvino_says_to_export_first(tmp_path):
    with pytest.raises(ExportFolderError, match=r"not a folder: export it first .*--int8.*backend 'openvino'"):
        xe.load(tmp_path / "model.pth", backend="openvino")


def test_without_openvino_the_error_names_the_install(tiny_export, manifest, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)      # `import openvino` raises ImportError
    monkeypatch.setattr(ov_runner, "_core", None)
    with pytest.raises(OpenVINOUnavailable, match=INSTALL.replace("[", r"\[").replace("]", r"\]")):
        xe.load(tiny_export.folder, backend="openvino")
    assert checks.check_openvino(manifest, None, {}, None, None) == []     # the export check skips it
    monkeypatch.setattr(ch, "module_available", lambda name: name != "openvino")
    paths = [p for p in ec.export_candidates(manifest.raw, torch.device("cpu")) if p.backend == "openvino"]
    assert len(paths) == 3 and all(not p.available and INSTALL in p.why for p in paths)
    assert ec._openvino_version() is None


def test_cli_infer_and_doctor_know_openvino(tiny_export, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from xclip_engine.engine.cli import main

    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    video = write_index_video(tmp_path / "a.mp4", 20, size=(64, 48))
    r = CliRunner().invoke(main, ["infer", video, "--model", tiny_export.folder, "--backend", "openvino",
                                  "--precision", "int8", "--labels", ", ".join(LABELS), "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    assert "backend: openvino (int8)" in r.stderr and '"error": null' in r.stdout
    r = CliRunner().invoke(main, ["infer", video, "--model", tiny_export.folder, "--backend", "openvino",
                                  "--device", "cuda", "--labels", "a, b"])
    assert r.exit_code == 2 and "backend='onnxruntime'" in r.stderr
    r = CliRunner().invoke(main, ["doctor", "--model", tiny_export.folder, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "OpenVINO 20" in r.stdout and "openvino int8" in r.stdout
