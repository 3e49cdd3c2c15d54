"""`xclip-engine serve` with an EVL model (closed-set: its own classes, no text): the app's rules
in-process, the replica's loading rules without Ray, then one real EVL server (Ray Serve)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from xclip_engine.engine.serve.app import Settings, create_app  # noqa: E402

from . import test_serve as base  # noqa: E402

EXAMPLES, KEY, FakeEngine, clip_bytes, post = base.EXAMPLES, base.KEY, base.FakeEngine, base.clip_bytes, base.post
free_port, kill_group, multipart, request = base.free_port, base.kill_group, base.multipart, base.request

NAMES = ["abseiling", "bowling", "cooking", "dancing", "eating"]


@pytest.fixture(scope="module")
def evl_dir(tmp_path_factory):
    """A tiny random EVL saved in our format with its class names, and a nameless one."""
    import xclip_engine as xe

    d = tmp_path_factory.mktemp("serve-evl")
    m = xe.load("evl-tiny-test", random_init=True)
    xe.save_model(m.net, str(d / "ours"), labels=NAMES)
    xe.save_model(m.net, str(d / "nameless"))
    return d


# ---- in-process: the app over a closed-set stand-in engine ----------------------------------------
class ClosedSetEngine(FakeEngine):
    num_frames, image_size, default_labels = 4, 32, NAMES
    closed_set, family, default_views = True, "evl", "3x1"


@pytest.fixture
def closed(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    engine = ClosedSetEngine(Settings(max_upload_mb=4, decode_timeout_s=20, max_queue=2))
    yield TestClient(create_app(lambda: engine)), engine
    assert os.listdir(tmp) == []


def test_closed_set_app_scores_its_classes_in_its_views(closed):
    client, engine = closed
    r = post(client, data=clip_bytes(), topk="2")
    assert r.status_code == 200, r.text
    assert [t["label"] for t in r.json()["top"]] == NAMES[:2]
    shape, labels, topk = engine.seen[-1]
    assert shape == (3, 4, 3, 32, 32) and labels == tuple(NAMES) and topk == 2   # the model's default 3x1
    assert post(client, data=clip_bytes(), views="1x3").status_code == 200         # a request's views override
    assert engine.seen[-1][0] == (3, 4, 3, 32, 32)
    assert post(client, data=clip_bytes(), views="1x1").status_code == 200
    assert engine.seen[-1][0][0] == 1
    assert post(client, data=clip_bytes(), views="6x1").status_code == 422         # the limits still hold
    assert post(client, data=clip_bytes(), labels="   ").status_code == 200        # blank: no labels


@pytest.mark.parametrize("labels", ["cooking, dancing", ", ".join(NAMES)])
def test_closed_set_app_refuses_a_labels_field(closed, labels):
    client, engine = closed
    r = post(client, data=clip_bytes(), labels=labels)
    assert r.status_code == 422
    body = r.json()
    assert body["closed_set"] is True and body["num_classes"] == 5
    assert "closed-set classifier of 5 classes" in body["error"] and "abseiling" in body["error"]
    assert engine.seen == []   # refused before the upload is decoded


# ---- the replica's loading rules, without Ray -----------------------------------------------------
def replica(model_src, settings=None, backbone=None):
    """The deployment's class in this process (not a Ray actor), its model loaded."""
    pytest.importorskip("ray.serve")
    from xclip_engine.engine.serve.app import _REGISTRY
    from xclip_engine.engine.serve.deployment import XclipDeployment

    cls = XclipDeployment.func_or_class.__mro__[1]   # our class, below Serve's ASGI ingress wrapper
    assert cls.__module__ == XclipDeployment.func_or_class.__module__ and "_load" in vars(cls)
    r = cls(model_src, settings or Settings(), decode_workers=1, backbone=backbone)
    r._model_pool.shutdown(wait=True)   # the load ran on the replica's model thread
    r.decode_pool.shutdown()
    _REGISTRY.pop("engine", None)
    return r


def test_replica_loads_an_evl_model(evl_dir):
    r = replica(str(evl_dir / "ours"))
    assert r.ready and r.load_error is None and r.closed_set and r.family == "evl"
    assert r.default_labels == NAMES and r.default_views == "3x1" and "preprocessing" in r.read_args
    info = r.info()
    assert (info["family"], info["num_classes"], info["classes"], info["embed_dim"]) == ("evl", 5, NAMES, 32)
    renamed = [f"class {i}" for i in range(5)]
    r = replica(str(evl_dir / "nameless"), Settings(labels=renamed, labels_from="--labels-file"))
    assert r.ready and r.default_labels == renamed


@pytest.mark.parametrize("src, settings, backbone, says", [
    ("ours", Settings(labels=["cooking", "dancing"], labels_from="--labels"), None, "cannot score free-text"),
    ("ours", Settings(labels=["x", "y", "z"], labels_from="--labels-file"), None, "the 3 labels given"),
    ("nameless", None, None, "no class names"),
    (None, None, "clip.pt", "backbone"),   # the bundled X-CLIP model holds its own
])
def test_replica_refuses_what_the_user_must_fix(evl_dir, src, settings, backbone, says):
    r = replica(str(evl_dir / src) if src else None, settings, str(evl_dir / backbone) if backbone else None)
    assert not r.ready and r.usage_error and says in r.load_error, r.load_error
    assert r.status() == {"ready": False, "error": r.load_error, "usage_error": True}


def test_serve_backbone_without_a_model_is_a_usage_error(monkeypatch):
    from click.testing import CliRunner

    from xclip_engine.engine import serve
    from xclip_engine.engine.cli import main

    monkeypatch.setattr(serve, "missing_modules", lambda: [])
    r = CliRunner().invoke(main, ["serve", "--backbone", "ViT-B-16.pt"])
    assert r.exit_code == 2 and "--backbone goes with an official EVL .pth" in r.output


# ---- real servers (Ray Serve): a refused start, then one EVL server ------------------------------
def test_serve_refuses_a_backbone_the_model_does_not_take(evl_dir):
    """Started for real: the replica's load error reaches the user, exit status 2, no traceback."""
    pytest.importorskip("ray.serve")
    work = tempfile.mkdtemp(prefix="xe-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=os.path.join(work, "ray"), RAY_USAGE_STATS_ENABLED="0")
    try:
        r = subprocess.run([sys.executable, "-m", "xclip_engine.engine.cli", "serve", "--model", str(evl_dir / "ours"),
                            "--backbone", str(evl_dir / "clip.pt"), "--port", str(free_port()), "--num-cpus", "2"],
                           env=env, capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-4000:]
    assert "cannot load the model" in out and "holds the whole model" in out and "Traceback" not in out, out[-4000:]


@pytest.fixture(scope="module")
def evl_server(evl_dir):
    pytest.importorskip("ray.serve")
    port = free_port()
    work = tempfile.mkdtemp(prefix="xe-")           # short: Ray's socket paths live under RAY_TMPDIR
    uploads = os.path.join(work, "tmp")
    os.mkdir(uploads)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TMPDIR=uploads, RAY_TMPDIR=os.path.join(work, "ray"), XCLIP_ENGINE_API_KEY=KEY,
               RAY_USAGE_STATS_ENABLED="0")
    log = open(os.path.join(work, "server.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-m", "xclip_engine.engine.cli", "serve", "--model",
                             str(evl_dir / "ours"), "--port", str(port), "--num-cpus", "2", "--batch-wait-ms", "20"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            log.seek(0)
            pytest.fail(f"the EVL server did not become ready:\n{log.read()[-4000:]}")
        try:
            if request(base + "/healthz", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    yield {"base": base, "proc": proc, "uploads": uploads}
    kill_group(proc)
    log.close()
    shutil.rmtree(work, ignore_errors=True)


def call(server, file_bytes, path="/v1/classify", **fields):
    body, ctype = multipart(fields, file_bytes)
    return request(server["base"] + path, body, {"Content-Type": ctype, "Authorization": f"Bearer {KEY}"})


def test_evl_server_classify_embed_models(evl_server, evl_dir):
    import xclip_engine as xe

    m = xe.load(evl_dir / "ours")
    [want] = m.classify([EXAMPLES[0]], topk=5)          # the model's own reading: its preprocessing, 3x1 views
    status, _, body = call(evl_server, clip_bytes(0), topk="5")
    assert status == 200, body
    got = {t["label"]: t["score"] for t in body["top"]}
    assert set(got) == set(NAMES)
    for label, score in want.top:
        assert got[label] == pytest.approx(score, abs=1e-4)
    status, _, body = call(evl_server, clip_bytes(0), labels="a red circle, a blue square")
    assert status == 422 and body["closed_set"] is True and "closed-set classifier of 5 classes" in body["error"]
    status, _, body = call(evl_server, clip_bytes(1), path="/v1/embed", views="1x1")
    assert status == 200 and body["dim"] == 32 and len(body["embedding"]) == 32
    status, _, body = request(evl_server["base"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    info = body["models"][0]
    assert status == 200 and info["family"] == "evl" and info["num_classes"] == 5 and info["classes"] == NAMES
    assert info["default_views"] == "3x1" and info["embed_dim"] == 32
    assert os.listdir(evl_server["uploads"]) == []

