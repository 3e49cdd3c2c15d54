"""backend="auto" on an export folder (engine/runtime/export_choice.py): it measures the precisions
whose export check passed, compares each with the folder's fp32 graphs, and takes the fastest."""

import json

import xclip_engine as xe


def test_auto_measures_the_checked_precisions(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    m = xe.load(tiny_export.folder, backend="auto", device="cpu")
    paths = {p.name: p for p in m.choice.paths}
    fp32, int8 = paths["onnxruntime fp32"], paths["onnxruntime int8"]
    assert fp32.available and fp32.verified and fp32.seconds > 0
    # int8 (when its export check passed) is timed and compared with the fp32 graphs here; on this
    # random tiny model it may land on either side of its 5% bound, and its verdict must follow its error
    if int8.available:
        assert int8.seconds > 0 and int8.verified == (int8.error <= int8.bound)
    assert not paths["onnxruntime fp16"].available and "GPU" in paths["onnxruntime fp16"].why
    # every runtime that runs here competes (OpenVINO too, when installed): the fastest verified one wins
    verified = [p for p in paths.values() if p.verified and p.seconds]
    best = min(verified, key=lambda p: p.seconds)
    assert (m.backend, m.choice.precision) == (best.backend, best.precision)
    assert m.net.precision == m.choice.precision       # the runtime loaded what auto chose


def test_a_precision_that_failed_its_export_check_is_never_taken(export_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    manifest = export_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    for row in data["checks"]:
        if row["precision"] == "int8":
            row["ok"] = False            # as the export writes it when the int8 graphs fail
    manifest.write_text(json.dumps(data))
    m = xe.load(export_copy, backend="auto", device="cpu")
    int8 = next(p for p in m.choice.paths if p.name == "onnxruntime int8")
    assert not int8.available and "failed its export check" in int8.why
    assert m.choice.precision == "fp32" and m.net.precision == "fp32"
