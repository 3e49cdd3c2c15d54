"""Shared by the Ray tests: a folder of good and bad clips, the plain run's rows for it, and a
private Ray with small, bounded resources (no dashboard, 256 MB object store, its own temp dir)."""

from __future__ import annotations

import os
import shutil

import pytest
from video_factory import write_index_video, write_text_as_video, write_truncated_mp4, write_zero_byte

from .ray_helpers import OBJECT_STORE, REF, TOPK, short_tmp


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """10 good clips (one in a sub-folder), a zero-byte file, a text file and a truncated MP4."""
    d = tmp_path_factory.mktemp("ray-clips")
    (d / "sub").mkdir()
    for i in range(9):
        write_index_video(d / f"clip{i:02d}.mp4", 16 + 2 * i, size=(64, 48))
    write_index_video(d / "sub" / "deep.webm", 12, codec="vp9", size=(48, 64))
    write_zero_byte(d / "bad_empty.mp4")
    write_text_as_video(d / "bad_text.mp4")
    write_truncated_mp4(d / "trunc.mp4", num_frames=60, keep=0.6, faststart=True)
    return d


@pytest.fixture(scope="session")
def plain(clip_dir, tmp_path_factory):
    """The plain run's output file (bundled model, its labels) and its rows."""
    import xclip_engine as xe

    out = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    rows = list(xe.infer([clip_dir], topk=TOPK, output=str(out), backend=REF))
    assert len(rows) == 13 and sum(r["error"] is not None for r in rows) == 2
    return out, rows


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray for one test module; xe.infer(ray="local") uses the one this process started."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("pyarrow")
    temp = short_tmp("xer-")
    saved = os.environ.get("RAY_AUTH_MODE")   # a local ray.init sets it for the process: put it back after
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False,
             _temp_dir=temp, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def trace(tmp_path, monkeypatch):
    """The model actors' trace folder (engine/cluster/ray_data.py trace_folder): node, pid, batches."""
    folder = tmp_path / "trace"
    monkeypatch.setenv("XCLIP_ENGINE_RAY_TRACE", str(folder))
    return folder


