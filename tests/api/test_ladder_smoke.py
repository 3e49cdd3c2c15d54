"""benchmarks/ladder.py --smoke: every rung's machinery on a tiny model, in seconds (nothing measured).

The ONNX rungs need three torch.onnx exports (tens of seconds on a 2-core machine), so this test
runs the others; tests/export covers the export folder and its runtime, and bench_export.py times it.
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

pytest.importorskip("transformers", reason="the ladder's baseline rungs need transformers")

RUNGS = ["hf_fp32", "hf_bf16_autocast", "ours_fp32_video", "ours_fp32_compile", "ours_bf16", "ours_autocast_bf16",
         "ours_auto", "triton", "tensorrt_fp16"]


def test_ladder_smoke_writes_every_rung(tmp_path):
    import ladder

    result = ladder.main(["--smoke", "--json-only", "--out", str(tmp_path), "--rungs", *RUNGS])
    data = json.loads((tmp_path / "ladder.json").read_text())
    assert (tmp_path / "ladder.md").read_text().startswith("Machine: ")
    assert set(data["matmul_gflops"]) == {"fp32", "bf16"} and data["mode"] == "smoke"
    rows = {r["rung"]: r for r in data["rows"]}
    assert set(rows) == {"ours_fp32", *RUNGS}
    for name in ("ours_fp32", "hf_fp32", "hf_bf16_autocast", "ours_bf16", "ours_autocast_bf16", "ours_fp32_video",
                 "ours_auto"):
        r = rows[name]
        assert r["videos/s"] > 0 and r["p90 s"] >= r["p50 s"] > 0 and r["peak RSS MiB"] > 0 and r["GFLOP/s"] > 0
    assert any(t["what"].startswith("ours_auto / ") for t in data["targets"])
    for name in ("hf_fp32", "ours_bf16", "ours_autocast_bf16", "ours_auto"):   # answers compared with ours fp32
        assert 0 <= rows[name]["top-1 agree"] <= 1 and rows[name]["max err % range"] >= 0
    assert rows["ours_fp32"]["max err % range"] == 0 and rows["ours_fp32"]["top-1 agree"] == 1
    assert rows["hf_fp32"]["max err % range"] < 0.1, "transformers and ours compute the same logits"
    assert rows["ours_fp32_compile"]["note"].startswith("skipped: left out of --smoke")
    if not data["machine"]["gpu"]:
        assert "needs a CUDA GPU" in rows["triton"]["note"] and "needs a CUDA GPU" in rows["tensorrt_fp16"]["note"]
    f = data["records"][0]["flops"]
    assert f["hf_forward_gflop_per_video"] > f["ours_gflop_per_video"] > f["video_tower_gflop_per_video"] > 0
    assert [t["what"] for t in result["targets"]] and all("met" in t for t in result["targets"])


def test_growth_smoke_table_and_sentences(tmp_path):
    import ladder

    rows = ladder.main(["--growth", "--smoke", "--out", str(tmp_path)])
    assert {(r["T"], r["B"], r["K"]) for r in rows} == {(4, 2, 10), (8, 2, 10), (4, 1, 10), (4, 2, 40)}
    assert all(r["videos/s"] > 0 and r["peak RSS MiB"] > 0 for r in rows)
    data = json.loads((tmp_path / "growth.json").read_text())
    assert [s.split(":")[0] for s in data["linearity"]] == ["Frames", "Batch", "Labels"]
    assert data["path"].startswith("auto: ")
