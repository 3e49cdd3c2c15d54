"""`xclip-engine` commands: what a user types, with the exit codes and output formats promised."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xclip_engine.engine.cli import main
from xclip_engine.engine.io.labels import load_labels


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_infer_folder_json_answers_every_input(tiny_hf, video_dir, good, bad):
    r = run("infer", video_dir, "--model", tiny_hf, "--labels", "cooking, dancing, surfing",
            "--format", "json", "--topk", "2")
    assert r.exit_code == 1, r.output                      # some inputs failed
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    found = sorted(os.path.relpath(row["path"], video_dir) for row in rows)
    assert found == sorted(good + bad)                    # notes.txt is not a video: not listed
    for row in rows:
        assert set(row) == {"path", "top", "error"}
        assert row["path"].startswith(str(video_dir))     # as found under the folder the user gave
        if os.path.basename(row["path"]) in {os.path.basename(b) for b in bad}:
            assert row["error"] and row["top"] == []
        else:
            assert row["error"] is None and len(row["top"]) == 2
            assert {t["label"] for t in row["top"]} <= {"cooking", "dancing", "surfing"}
    assert "4 of 7 inputs failed" in r.stderr


def test_infer_all_good_exit_0_csv_and_output_file(tiny_hf, video_dir, tmp_path, good):
    out = tmp_path / "res.csv"
    files = [video_dir / g for g in good]
    r = run("infer", *files, "--model", tiny_hf, "--labels", "a, b", "--format", "csv", "--output", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(row["path"], row["rank"]) for row in rows] == [(str(f), str(k)) for f in files for k in (1, 2)]


def test_infer_table_and_bundled_label_set(tiny_hf, video_dir, good):
    r = run("infer", video_dir / good[0], "--model", tiny_hf, "--labels-file", "hmdb51", "--topk", "3")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == str(video_dir / good[0]) and len(lines) == 4
    hmdb = set(load_labels("hmdb51"))
    for line in lines[1:]:
        score, label = line.split("%", 1)
        assert 0 <= float(score) <= 100 and label.strip() in hmdb


def test_labels_file_one_per_line(tiny_hf, video_dir, tmp_path, good):
    f = tmp_path / "labels.txt"
    f.write_text("juggling\n\nknitting\n")
    r = run("infer", video_dir / good[0], "--model", tiny_hf, "--labels-file", f, "--format", "json")
    assert r.exit_code == 0
    assert {t["label"] for t in json.loads(r.stdout)["top"]} == {"juggling", "knitting"}


@pytest.mark.parametrize("args, message", [
    (["--labels", " , "], "non-empty labels"),
    (["--labels-file", "/no/such/labels.txt"], "no such file"),
    (["--labels", "a", "--labels-file", "k400"], "not both"),
    ([], "no labels"),
])
def test_usage_errors_exit_2(tiny_hf, video_dir, args, message, good):
    r = run("infer", video_dir / good[0], "--model", tiny_hf, *args)
    assert r.exit_code == 2 and message in r.stderr, r.output


def test_threads_sets_the_thread_count_for_torch_and_onnxruntime(tiny_hf, video_dir, good, monkeypatch):
    import onnxruntime
    import torch

    from xclip_engine.export import ort_runner

    before = torch.get_num_threads()
    try:
        r = run("infer", video_dir / good[0], "--model", tiny_hf, "--labels", "a, b", "--threads", 1)
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        seen = {}
        monkeypatch.setattr(onnxruntime, "InferenceSession",
                            lambda src, so, **kw: seen.setdefault("threads", so.intra_op_num_threads))
        ort_runner._session("model.onnx", ["CPUExecutionProvider"], None)
        assert seen["threads"] == 1
    finally:
        torch.set_num_threads(before)
    r = run("infer", video_dir / good[0], "--model", tiny_hf, "--labels", "a", "--threads", 0)
    assert r.exit_code == 2 and "--threads" in r.stderr


def test_bad_model_exit_2(video_dir, tmp_path, good):
    r = run("infer", video_dir / good[0], "--model", tmp_path, "--labels", "a")
    assert r.exit_code == 2 and "cannot load the model" in r.stderr and str(tmp_path) in r.stderr


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "xclip-engine")
    r = subprocess.run([exe, "models"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "xclip-base-patch32" in r.stdout and "xclip-large-patch14-16-frames" in r.stdout


def test_help_does_not_import_torch():
    # `xclip-engine --help` and each command's --help answer at once: torch (seconds to import) loads
    # only when a command runs
    code = ("import sys; from click.testing import CliRunner; from xclip_engine.engine.cli import main; "
            "assert all(CliRunner().invoke(main, [*c, '--help']).exit_code == 0 for c in "
            "([], ['infer'], ['export'], ['train'], ['eval'], ['make-dataset'])); "
            "print(sorted(m for m in ('torch', 'av', 'cv2', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
