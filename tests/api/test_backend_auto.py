"""backend="auto" (engine/runtime/choice.py): the fastest verified path wins, a path that fails its
verification is never chosen, and the verdict is cached, reused, and rebuilt when corrupt or stale.
Timings and capabilities are faked; verification runs for real on the tiny model."""

import json
import os

import pytest
import torch

import xclip_engine as xe
from xclip_engine.engine.runtime import cache
from xclip_engine.engine.runtime import choice as ch
from xclip_engine.engine.runtime import export_choice as ec


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / cache.FILE


class Timed(torch.nn.Module):
    """A path's net with a faked speed (seconds per call) and, optionally, wrong answers."""

    def __init__(self, net, seconds, wrong=False):
        super().__init__()
        self.net, self.seconds, self.wrong, self.config = net, seconds, wrong, net.config

    def forward(self, px, text):
        out = self.net(px, text)
        return out + 10 * out.abs().max() * torch.randn_like(out) if self.wrong else out


@pytest.fixture
def fake_speeds(monkeypatch):
    """fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3}, wrong={"reference bf16"}): the
    measured seconds of each path; returns a list that records each measurement run."""
    runs = []

    def set_(speeds, wrong=()):
        real_build = ch.build_path

        def build(path, net, device):
            return Timed(real_build(path, net, device), speeds[path.name], path.name in wrong)

        monkeypatch.setattr(ch, "build_path", build)
        monkeypatch.setattr(ch, "time_call", lambda fn, *a, **k: fn.seconds)
        real_measure = ch.measure_checkpoint

        def measure(*a, **k):
            runs.append(1)
            return real_measure(*a, **k)

        monkeypatch.setattr(ch, "measure_checkpoint", measure)
        return runs
    return set_


def test_fastest_verified_path_wins(fake_speeds, tiny_hf, capsys):
    fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert (m.choice.backend, m.choice.precision) == ("reference", "bf16")
    assert m.backend == "reference" and m.net.net.precision == "bf16"
    assert "reference bf16" in m.backend_note and "3.33x" in m.backend_note
    err = capsys.readouterr().err
    assert "first use" in err and "timing and verifying" in err   # it says what it does, on stderr
    paths = {p.name: p for p in m.choice.paths}
    assert paths["reference bf16"].verified and paths["reference fp32"].verified
    assert not paths["triton fp32"].available and "GPU" in paths["triton fp32"].why


def test_the_slower_path_loses(fake_speeds, tiny_hf):
    fake_speeds({"reference fp32": 0.2, "reference bf16": 0.3})
    m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert (m.choice.backend, m.choice.precision) == ("reference", "fp32")
    assert m.net.net.visual.conv1.weight.dtype == torch.float32   # the fake's wrapped net


def test_a_path_that_fails_verification_is_never_chosen(fake_speeds, tiny_hf):
    fake_speeds({"reference fp32": 1.0, "reference bf16": 0.01}, wrong={"reference bf16"})
    m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert (m.choice.backend, m.choice.precision) == ("reference", "fp32")
    bf16 = next(p for p in m.choice.paths if p.name == "reference bf16")
    assert bf16.verified is False and "disagrees" in bf16.why
    assert "NO" in m.choice.table()


def test_the_verdict_is_cached_and_reused(fake_speeds, tiny_hf, private_cache, capsys):
    runs = fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    xe.load(tiny_hf, backend="auto", device="cpu")
    assert private_cache.is_file() and len(runs) == 1
    capsys.readouterr()
    m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert len(runs) == 1, "the second load measured again"
    assert m.choice.cached and m.choice.precision == "bf16" and "cached" in m.backend_note
    assert "first use" not in capsys.readouterr().err


def test_a_corrupt_cache_is_rebuilt(fake_speeds, tiny_hf, private_cache):
    runs = fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text("{ not json")
    with pytest.warns(UserWarning, match="unreadable"):
        m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert len(runs) == 1 and m.choice.precision == "bf16"
    assert json.loads(private_cache.read_text())["format"] == cache.FORMAT
    # an entry whose verdict was damaged by hand is measured again, not trusted
    data = json.loads(private_cache.read_text())
    for entry in data["entries"].values():
        entry["verdict"] = {"backend": "reference"}
    private_cache.write_text(json.dumps(data))
    xe.load(tiny_hf, backend="auto", device="cpu")
    assert len(runs) == 2


def test_a_stale_verdict_is_not_trusted(fake_speeds, tiny_hf, monkeypatch):
    runs = fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    xe.load(tiny_hf, backend="auto", device="cpu")
    monkeypatch.setattr(torch, "__version__", "9.9.9")        # another torch: measure again
    xe.load(tiny_hf, backend="auto", device="cpu")
    assert len(runs) == 2
    # an entry stored under this key whose fingerprint differs (edited, or a collision) is stale
    data = json.loads(open(cache.cache_path()).read())
    for entry in data["entries"].values():
        entry["fingerprint"]["cpu"] = "another CPU"
    open(cache.cache_path(), "w").write(json.dumps(data))
    xe.load(tiny_hf, backend="auto", device="cpu")
    assert len(runs) == 3


def test_the_cache_follows_its_environment_variable(fake_speeds, tiny_hf, tmp_path, monkeypatch):
    fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "elsewhere"))
    m = xe.load(tiny_hf, backend="auto", device="cpu")
    assert m.choice.cache_file == str(tmp_path / "elsewhere" / cache.FILE) and os.path.isfile(m.choice.cache_file)


def test_asked_precision_limits_the_candidates(fake_speeds, tiny_hf):
    fake_speeds({"reference fp32": 1.0, "reference bf16": 0.3})
    m = xe.load(tiny_hf, backend="auto", device="cpu", precision="fp32")
    assert m.choice.precision == "fp32" and m.net.net.visual.conv1.weight.dtype == torch.float32


def test_fp16_or_int8_on_a_checkpoint_says_where_they_run(tiny_hf):
    for precision in ("fp16", "int8"):
        with pytest.raises(ValueError, match=f"export --model SOURCE --{precision}"):
            xe.load(tiny_hf, backend="auto", device="cpu", precision=precision)


def test_gpu_candidates_are_the_reference_and_triton(monkeypatch):
    monkeypatch.setattr(ch, "module_available", lambda name: name == "triton")
    paths = {p.name: p for p in ch.checkpoint_candidates(torch.device("cuda"))}
    assert paths["reference fp32"].available and paths["triton fp32"].available
    assert not paths["reference bf16"].available
    monkeypatch.setattr(ch, "module_available", lambda name: False)
    paths = {p.name: p for p in ch.checkpoint_candidates(torch.device("cuda"))}
    assert not paths["triton fp32"].available and "triton" in paths["triton fp32"].why


def _manifest(checks, precisions=("fp32", "int8"), tensorrt=None):
    return {"precisions": list(precisions), "tensorrt": tensorrt, "checks": checks,
            "graphs": {"video": {p: {"sha256": p} for p in precisions}}}


def test_export_candidates_take_only_checked_precisions(monkeypatch):
    monkeypatch.setattr(ch, "module_available", lambda name: name in ("onnxruntime", "tensorrt"))
    row = lambda p, ok: {"file": f"video.{p}.onnx", "precision": p, "ok": ok,   # noqa: E731
                         "outputs": {"logits": {"bound": 0.05}}}
    cpu = {p.name: p for p in ec.export_candidates(_manifest([row("fp32", True), row("int8", False)]),
                                                      torch.device("cpu"))}
    assert cpu["onnxruntime fp32"].available
    assert not cpu["onnxruntime int8"].available and "failed its export check" in cpu["onnxruntime int8"].why
    assert not cpu["tensorrt fp16"].available
    ok = _manifest([row("fp32", True), row("int8", True)])
    assert ec.export_candidates(ok, torch.device("cpu"))[2].available      # int8 now a candidate
    # an older folder's checks had no verdicts: fp32 passed (the export would have failed), int8 is unknown
    old = _manifest([{"file": "video.fp32.onnx", "precision": "fp32", "max_rel_error": 1e-6},
                     {"file": "video.int8.onnx", "precision": "int8", "max_rel_error": 0.01}])
    old_paths = {p.name: p for p in ec.export_candidates(old, torch.device("cpu"))}
    assert old_paths["onnxruntime fp32"].available and not old_paths["onnxruntime int8"].available
    # on a GPU: the TensorRT engine when it passed its check right after it was built
    gpu = _manifest([row("fp32", True), row("fp16", True), row("fp16 TensorRT", True)],
                    precisions=("fp32", "fp16"), tensorrt={"video": {}})
    gpu_paths = {p.name: p for p in ec.export_candidates(gpu, torch.device("cuda"), has_plan=True)}
    assert gpu_paths["tensorrt fp16"].available and gpu_paths["onnxruntime fp16"].available
    assert not gpu_paths["onnxruntime int8"].available


def test_pick_never_takes_an_unverified_path():
    paths = [ch.PathResult("onnxruntime", "fp32", True, verified=True, seconds=1.0),
             ch.PathResult("onnxruntime", "int8", True, verified=False, seconds=0.1),
             ch.PathResult("tensorrt", "fp16", False, "needs a CUDA GPU")]
    assert ch.pick(paths).name == "onnxruntime fp32"
    paths[0].verified = False
    with pytest.raises(RuntimeError, match="no path both runs here and passed its check"):
        ch.pick([paths[1], paths[2]])


def test_explicit_backends_get_a_note_too(tiny_hf):
    m = xe.load(tiny_hf)
    assert m.backend_note == "reference (fp32, asked for)" and m.choice is None


def test_unknown_backend_is_refused(tiny_hf):
    with pytest.raises(ValueError, match="auto, reference"):
        xe.load(tiny_hf, backend="fastest")


def test_time_call_repeats_fast_calls_and_keeps_the_fastest():
    calls = []

    def fast():
        calls.append(1)

    assert ch.time_call(fast, min_seconds=0.0) >= 0 and len(calls) == ch.TIMED_CALLS
    calls.clear()
    ch.time_call(fast, min_seconds=0.05, max_calls=20)
    assert len(calls) == 20          # microsecond calls: repeated up to the cap, never one hiccup deciding
    delays = iter([0.03, 0.001, 0.02])
    import time as _time

    assert ch.time_call(lambda: _time.sleep(next(delays)), min_seconds=0.0) < 0.015   # the minimum of three
