"""`xclip-engine doctor`: the machine, every path with its verdict and speed, and auto's pick."""

import json

from click.testing import CliRunner

from xclip_engine.engine.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_doctor_json_lists_the_machine_and_every_path(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    r = run("doctor", "--model", tiny_hf, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["packages"]["torch"]
    paths = {(p["backend"], p["precision"]): p for p in report["auto"]["paths"]}
    assert set(paths) >= {("reference", "fp32"), ("reference", "bf16"), ("triton", "fp32"),
                          ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("tensorrt", "fp16")}
    taken = paths[(report["auto"]["backend"], report["auto"]["precision"])]
    assert taken["available"] and taken["verified"] and taken["seconds"] > 0
    for p in paths.values():
        assert p["available"] or p["why"], p            # every path that cannot run says why
    assert "GPU" in paths[("triton", "fp32")]["why"] or report["machine"]["gpus"]
    assert "xclip-engine export" in paths[("onnxruntime", "int8")]["why"]
    assert not report["cached"]
    again = json.loads(run("doctor", "--model", tiny_hf, "--device", "cpu", "--json").stdout)
    assert again["cached"] and again["auto"]["backend"] == report["auto"]["backend"]


def test_doctor_table_says_which_path_auto_takes(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("XCLIP_ENGINE_CACHE", str(tmp_path / "cache"))
    r = run("doctor", "--model", tiny_hf, "--device", "cpu")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for text in ("machine:", "versions:", "reference fp32", "reference bf16", "<- takes", "auto: reference"):
        assert text in out, out
    assert "first use" in r.stderr   # the measurement says what it does, on stderr


def test_doctor_with_a_missing_model_is_a_usage_error(tmp_path):
    r = run("doctor", "--model", tmp_path / "nope")
    assert r.exit_code == 2 and "cannot examine the model" in r.stderr
