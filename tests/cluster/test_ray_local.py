"""`--ray local` / `xe.infer(ray="local")`: the plain run's rows and files on Ray Data, a model actor
killed mid-run, and resume of a folder output. One private Ray for the module (conftest.local_ray)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from .ray_helpers import REF, TOPK, assert_same_rows, rows_of, trace_events

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

import xclip_engine as xe  # noqa: E402
from xclip_engine.engine.cli import main  # noqa: E402
from xclip_engine.engine.cluster.folder_output import parts, read_rows  # noqa: E402


def by_path(rows):
    return sorted(rows, key=lambda r: r["path"])


def test_same_rows_and_file_as_the_plain_run(local_ray, clip_dir, plain, tmp_path):
    plain_out, plain_rows = plain
    out = tmp_path / "ray.jsonl"
    run = xe.infer([clip_dir], topk=TOPK, output=str(out), ray="local", backend=REF)
    rows = list(run)
    assert rows == plain_rows                              # every input once, in the plain run's order
    assert out.read_bytes() == plain_out.read_bytes()      # byte for byte the plain run's file
    assert os.path.exists(f"{out}.meta.json") and not os.path.exists(f"{out}.lock")

    # the command line: same file, same exit status (1: two inputs failed)
    cli_out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(main, ["infer", str(clip_dir), "--ray", "local", "--topk", str(TOPK), "--format", "jsonl",
                                  "-o", str(cli_out), "--ray-actors", "1:2", "--backend", REF], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "videos 13, answered 11, failed 2" in r.stderr
    assert cli_out.read_bytes() == plain_out.read_bytes()

    # a manifest (one path per line, relative to its folder) lists the same inputs; a folder of
    # Parquet parts written by the workers holds the same rows
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(os.path.relpath(r["path"], tmp_path) for r in plain_rows) + "\n")
    folder = tmp_path / "parquet"
    rows = list(xe.infer([manifest], topk=TOPK, output=str(folder), fmt="parquet", ray="local", backend=REF))
    assert by_path(rows) == by_path(plain_rows)
    assert parts(str(folder)) and all(p.endswith(".parquet") for p in parts(str(folder)))
    assert by_path(read_rows(str(folder))) == by_path(plain_rows)


def test_a_killed_model_actor_still_answers_every_input_once(local_ray, clip_dir, plain, trace):
    """SIGKILL the model actor's process (its pid from the trace) once it has scored its first batch:
    Ray Data restarts the actor and retries its batches; the run answers every input exactly once."""
    _, plain_rows = plain
    killed = {}

    def kill_when_busy():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for e in trace_events(trace):
                if e["event"] == "batch":
                    os.kill(e["pid"], signal.SIGKILL)
                    killed["pid"] = e["pid"]
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_when_busy, daemon=True)
    watcher.start()
    # batch 1 and one decode task: 11 model batches, so the kill lands mid-run
    rows = list(xe.infer([clip_dir], topk=TOPK, ray="local", backend=REF, batch_size=1, workers=1))
    watcher.join(5)
    assert killed, "the model actor never scored a batch"
    assert_same_rows(rows, plain_rows, exact=False)      # each input once, in order, with its answer
    events = trace_events(trace)
    ready = {e["pid"] for e in events if e["event"] == "ready"}
    assert killed["pid"] in ready and len(ready) >= 2, events   # a new actor took over
    after = [e for e in events if e["event"] == "batch" and e["pid"] != killed["pid"]]
    assert after, "no batch was scored after the kill"


def test_resume_a_folder_output(local_ray, clip_dir, plain, tmp_path):
    _, plain_rows = plain
    folder = tmp_path / "out"
    first = list(xe.infer([clip_dir], topk=TOPK, output=f"{folder}/", ray="local", backend=REF, batch_size=4))
    assert by_path(first) == by_path(plain_rows)
    files = parts(str(folder))
    assert len(files) >= 2 and os.path.exists(folder / "_meta.json")
    # an interrupted run: one part never written, and the failed inputs are tried again on resume
    lost = rows_of(files[-1])
    os.remove(files[-1])
    again = {r["path"] for r in lost} | {r["path"] for r in plain_rows if r["error"] is not None}
    run = xe.infer([clip_dir], topk=TOPK, output=str(folder), ray="local", backend=REF, resume=True)
    assert sorted(run.todo) == sorted(again)
    assert sorted(run.skipped) == sorted({r["path"] for r in plain_rows} - again)
    assert sorted(r["path"] for r in run) == sorted(again)
    # each input exactly once across the parts, with the plain run's answer
    assert by_path(read_rows(str(folder))) == by_path(plain_rows)
    # without resume or overwrite the folder is refused; another run's sidecar is refused on resume
    with pytest.raises(ValueError, match="--resume"):
        xe.infer([clip_dir], topk=TOPK, output=str(folder), ray="local", backend=REF)
    with pytest.raises(ValueError, match="topk"):
        xe.infer([clip_dir], topk=2, output=str(folder), ray="local", backend=REF, resume=True)
    # overwrite replaces the parts only once every input is answered
    rows = list(xe.infer([clip_dir], topk=TOPK, output=str(folder), ray="local", backend=REF, overwrite=True))
    assert by_path(rows) == by_path(plain_rows) == by_path(read_rows(str(folder)))
    assert not os.path.exists(folder / ".incoming") and not os.path.exists(folder / ".lock")


def test_an_evl_model_on_ray_gives_the_plain_rows(local_ray, clip_dir, tmp_path):
    # EVL from the two files a user has (the official .pth and a CLIP backbone): each actor loads
    # both, reads with EVL's own preprocessing and views, and scores the model's classes, no text
    import torch
    from evl.factory import random_official, write_official_pth

    names = ["abseiling", "archery", "bowling", "cooking", "dancing"]
    visual, decoder = random_official(width=64, layers=2, patch=8, grid=4, frames=4, decoder_layers=2, classes=5)
    write_official_pth(tmp_path / "evl.pth", decoder)
    torch.save(visual, tmp_path / "clip.pt")
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    args = dict(topk=3, backend=REF, labels=xe.load_labels(str(tmp_path / "names.txt")))
    plain = list(xe.infer([clip_dir], tmp_path / "evl.pth", backbone=tmp_path / "clip.pt", **args))
    rows = list(xe.infer([clip_dir], str(tmp_path / "evl.pth"), backbone=str(tmp_path / "clip.pt"), ray="local",
                         **args))
    assert len(rows) == 13 and sum(r["error"] is not None for r in rows) == 2
    assert_same_rows(rows, plain, exact=False)   # the actors' batches may differ from the plain run's
    assert {t["label"] for r in rows if r["error"] is None for t in r["top"]} <= set(names)
