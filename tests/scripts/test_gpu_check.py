"""scripts/gpu_check.sh --cpu-half: the steps of the GPU check that run without a GPU, and its report."""

import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_half_writes_a_report_with_every_step(tmp_path):
    out = tmp_path / "gpu_check"
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu-half", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert set(steps) >= {"doctor", "gpu-tests", "bench_frame_attention", "ladder"}
    assert all(s["rc"] == 0 for s in steps.values()), steps
    auto = report["doctor"]["auto"]
    assert any(p["backend"] == "triton" and not p["available"] for p in auto["paths"])
    skipped = report["tests"]["gpu-tests"]["skipped"]
    assert skipped and all("GPU" in s["reason"] for s in skipped)   # they skip, and say why
    rungs = {row["rung"]: row for row in report["ladder"]["rows"]}
    assert "needs a CUDA GPU" in rungs["triton"]["note"] and rungs["ours_auto"]["videos/s"] > 0
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# gpu_check (cpu-half): all steps passed") and "## backend auto (doctor)" in md


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine with nvidia-smi runs the full check")
def test_without_a_gpu_the_full_check_refuses_with_a_reason(tmp_path):
    env = dict(os.environ)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "no NVIDIA GPU" in r.stderr
