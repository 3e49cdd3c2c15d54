"""`xclip-engine serve`: the app's validation and guard rails in-process (FastAPI TestClient, a stand-in
engine), then one real server (Ray Serve, the bundled model) started as a subprocess and shared."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from xclip_engine.engine.serve.app import Admission, Settings, check_api_key, create_app  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.mp4")))
KEY = "test-key-123"


def label_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0].split("_", 1)[1].replace("_", " ")


# ---- in-process: the app over a stand-in engine --------------------------------------------------
class FakeEngine:
    num_frames, image_size, default_labels = 8, 64, ["a", "b", "c"]

    def __init__(self, settings: Settings, ready: bool = True):
        self.settings, self.ready, self.load_error = settings, ready, None
        self.admission = Admission(settings.max_queue)
        self.decode_pool = ThreadPoolExecutor(2)
        self.seen = []

    def info(self):
        return {"name": "fake", "backend": "none"}

    async def classify(self, clip, labels, topk):
        self.seen.append((clip.shape, labels, topk))
        return [(lab, 1.0 / len(labels)) for lab in labels[:topk]]

    async def embed(self, clip):
        return [0.0] * 4


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A TestClient over a stand-in engine; uploads' temporary files go to tmp_path/tmp (checked empty)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    engine = FakeEngine(Settings(max_upload_mb=1, decode_timeout_s=5, max_queue=2, api_key=KEY))
    client = TestClient(create_app(lambda: engine))
    client.headers["Authorization"] = f"Bearer {KEY}"
    yield client, engine
    assert os.listdir(tmp) == []


def clip_bytes(i: int = 0) -> bytes:
    with open(EXAMPLES[i], "rb") as f:
        return f.read()


def post(client, path="/v1/classify", data=b"", name="v.mp4", **fields):
    files = {"file": (name, data, "video/mp4")} if data is not None else None
    return client.post(path, files=files, data=fields)


def test_api_key_check():
    assert check_api_key(None, None) and check_api_key("whatever", "")
    assert check_api_key("Bearer k1", "k1") and check_api_key("bearer k1", "k1")
    assert not check_api_key(None, "k1") and not check_api_key("Bearer k2", "k1") and not check_api_key("k1", "k1")


def test_admission_is_a_bounded_counter():
    a = Admission(2)
    assert a.try_enter() and a.try_enter() and not a.try_enter()
    a.leave()
    assert a.try_enter()
    a.draining = True
    a.leave()
    assert not a.try_enter()


def test_classify_answers_and_parses_the_form(fake):
    client, engine = fake
    r = post(client, data=clip_bytes(), labels="x, y, z, x", topk="2", views="4x3")
    assert r.status_code == 200, r.text
    assert [t["label"] for t in r.json()["top"]] == ["x", "y"]
    shape, labels, topk = engine.seen[-1]
    assert shape == (12, 8, 3, 64, 64) and labels == ("x", "y", "z") and topk == 2
    r = post(client, data=clip_bytes(), topk="50")            # default labels; topk capped by the set's size
    assert r.status_code == 200 and len(r.json()["top"]) == 3
    assert post(client, "/v1/embed", data=clip_bytes()).json()["embedding"] == [0.0] * 4


@pytest.mark.parametrize("fields, data, status", [
    ({}, None, 415),                                   # no form at all
    ({"topk": "1"}, None, 415),                        # a urlencoded form (no file)
    ({}, b"", 422),                                    # empty file
    ({}, b"this is not a video at all" * 40, 422),     # not a video
    ({"topk": "0"}, b"x", 422), ({"topk": "two"}, b"x", 422), ({"topk": "1001"}, b"x", 422),
    ({"views": "5x1"}, b"x", 422), ({"views": "2x2"}, b"x", 422), ({"views": "lots"}, b"x", 422),
    ({"labels": "a,,b"}, b"x", 422), ({"labels": ",".join(f"l{i}" for i in range(1001))}, b"x", 422),
    ({}, b"\0" * (1024 * 1024 + 1), 413),             # over --max-upload-mb 1
])
def test_bad_input_gets_a_4xx_and_a_json_error(fake, fields, data, status):
    client, _ = fake
    r = post(client, data=data, **fields)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_corrupt_video_is_422(fake):
    client, _ = fake
    data = clip_bytes()
    r = post(client, data=data[: len(data) // 3])
    assert r.status_code in (200, 422)   # a cut file may still decode from its first frames
    r = post(client, data=data[:48] + os.urandom(len(data) - 48))
    assert r.status_code == 422 and "error" in r.json() and "xclip-upload" not in r.json()["error"]


def test_not_multipart_is_415_and_unknown_path_404_json(fake):
    client, _ = fake
    r = client.post("/v1/classify", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and "error" in r.json()
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_api_key_required_except_healthz(fake):
    client, _ = fake
    del client.headers["Authorization"]
    assert client.get("/healthz").status_code == 200
    for r in (client.get("/v1/models"), client.get("/docs"), post(client, data=clip_bytes())):
        assert r.status_code == 401 and "error" in r.json()
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_full_queue_is_503_with_retry_after(fake):
    client, engine = fake
    engine.admission.active = engine.admission.limit        # the replica holds its limit of requests
    r = post(client, data=clip_bytes())
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "busy" in r.json()["error"]
    engine.admission.active = 0
    assert post(client, data=clip_bytes()).status_code == 200
    assert engine.admission.active == 0                     # every answered request left


def test_not_ready_is_503(fake):
    client, engine = fake
    engine.ready = False
    assert client.get("/healthz").status_code == 503
    assert post(client, data=clip_bytes()).status_code == 503


def test_slow_decode_is_408_and_its_file_still_removed(fake, monkeypatch):
    client, engine = fake
    engine.settings.decode_timeout_s = 0.2
    from xclip_engine.engine.video import decoders

    def slow(*a, **k):
        time.sleep(0.6)
        raise RuntimeError("never")

    monkeypatch.setattr(decoders, "read_clip", slow)
    r = post(client, data=clip_bytes())
    assert r.status_code == 408 and "error" in r.json()
    time.sleep(0.8)   # the decode thread finishes and removes its file (the fixture checks the folder)


def test_ingress_mode_rules():
    from xclip_engine.engine.serve.server import ingress_mode

    assert ingress_mode("auto", None, 1, "2.60.0") == "direct"
    assert ingress_mode("auto", None, 2, "2.60.0") == "proxy" and ingress_mode("auto", "auto", 1, "2.60.0") == "proxy"
    assert ingress_mode("auto", None, 1, "2.40.1") == "proxy"   # a Ray without Serve's throughput-optimized mode
    assert ingress_mode("proxy", None, 1, "2.60.0") == "proxy" and ingress_mode("direct", None, 1, "3.0.0") == "direct"
    for address, replicas in ((None, 2), ("ray://head:10001", 1)):
        with pytest.raises(ValueError, match="--ingress direct needs a private Ray"):
            ingress_mode("direct", address, replicas, "2.60.0")
    with pytest.raises(ValueError, match="needs Ray 2.56 or later"):
        ingress_mode("direct", None, 1, "2.50.0")


def test_answers_is_false_where_nothing_listens():
    from xclip_engine.engine.serve.server import answers

    t0 = time.monotonic()
    assert answers("127.0.0.1", free_port(), 0.5) is False and time.monotonic() - t0 < 10


def test_serve_direct_ingress_with_replicas_is_a_usage_error():
    pytest.importorskip("ray.serve")
    r = subprocess.run([sys.executable, "-m", "xclip_engine.engine.cli", "serve", "--ingress", "direct",
                        "--replicas", "2", "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--ingress direct needs" in r.stderr


def test_model_gate_holds_requests_while_a_batch_is_in_the_model():
    import asyncio

    pytest.importorskip("ray.serve")
    from xclip_engine.engine.serve.deployment import ModelGate

    async def run():
        gate, passed = ModelGate(), []

        async def request(i):
            await gate.wait_free()
            passed.append(i)

        await request(0)                       # the model idle: passes at once
        with gate:                             # a batch in the model
            waiting = [asyncio.create_task(request(i)) for i in (1, 2, 3)]
            await asyncio.sleep(0.05)
            assert passed == [0]               # held while the model is busy
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert sorted(passed) == [0, 1, 2, 3]  # all let in together when it is free

    asyncio.run(run())


def test_serve_without_the_extra_says_how_to_install(monkeypatch):
    from click.testing import CliRunner

    from xclip_engine.engine import serve
    from xclip_engine.engine.cli import main

    monkeypatch.setattr(serve, "missing_modules", lambda: ["ray[serve]"])
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 2 and "pip install 'xclip-engine[serve]'" in r.output


# ---- one real server: Ray Serve, the bundled model ----------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, data=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), _json(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), _json(e.read())


def _json(body: bytes):
    try:
        return json.loads(body) if body else None
    except ValueError:   # Ray Serve's proxy, before the app is deployed, answers in plain text
        return body.decode(errors="replace")


def multipart(fields: dict, file_bytes: bytes | None) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    if file_bytes is not None:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + file_bytes + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait(60)


def start_server(*args):
    """`xclip-engine serve` as a subprocess on a free loopback port, ready (/healthz 200) or failed."""
    pytest.importorskip("ray.serve")
    port = free_port()
    work = tempfile.mkdtemp(prefix="xs-")           # short: Ray's socket paths live under RAY_TMPDIR
    uploads = os.path.join(work, "tmp")
    os.mkdir(uploads)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TMPDIR=uploads, RAY_TMPDIR=os.path.join(work, "ray"), XCLIP_ENGINE_API_KEY=KEY,
               RAY_USAGE_STATS_ENABLED="0")
    log = open(os.path.join(work, "server.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-m", "xclip_engine.engine.cli", "serve", "--port", str(port),
                             "--num-cpus", "2", *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            log.seek(0)
            pytest.fail(f"the server did not become ready:\n{log.read()[-4000:]}")
        try:
            if request(base + "/healthz", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    return {"base": base, "proc": proc, "uploads": uploads, "log": log, "work": work}


def stop_server(server):
    kill_group(server["proc"])   # also Ray's processes, were the server killed rather than stopped
    server["log"].close()
    shutil.rmtree(server["work"], ignore_errors=True)


def logged(server, text: str, timeout: float = 30) -> bool:
    """Whether the server's output shows `text` within `timeout` s (its "serving on" line comes a
    moment after /healthz first answers 200: the command polls the replica every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(server["log"].name) as f:
            if text in f.read():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server():
    s = start_server("--max-batch", "8", "--batch-wait-ms", "20")   # one replica: direct ingress
    yield s
    stop_server(s)


def classify(server, file_bytes, auth=True, path="/v1/classify", **fields):
    body, ctype = multipart(fields, file_bytes)
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {KEY}"} if auth else {})}
    return request(server["base"] + path, body, headers)


def test_server_concurrent_clients_get_each_clips_class(server):
    jobs = [EXAMPLES[i % len(EXAMPLES)] for i in range(2 * len(EXAMPLES))]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda p: classify(server, open(p, "rb").read(), topk="3"), jobs))
    for path, (status, _, body) in zip(jobs, answers):
        assert status == 200, body
        assert body["top"][0]["label"] == label_of(path) and len(body["top"]) == 3
        assert body["model"] and body["backend"] and body["elapsed_ms"] > 0
    # batched together: 12 uploads at once, one decode thread, a 20 ms batch wait -> fewer model calls
    status, _, body = request(server["base"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    m = body["models"][0]
    assert status == 200 and m["requests_batched"] >= len(jobs) and m["batches"] < m["requests_batched"], m
    assert logged(server, "direct ingress")   # the one replica listens on the port itself


def test_server_labels_field_embed_models_docs(server):
    status, _, body = classify(server, clip_bytes(0), labels=f"{label_of(EXAMPLES[0])}, a blue square growing")
    assert status == 200 and [t["label"] for t in body["top"]] == [label_of(EXAMPLES[0]), "a blue square growing"]
    status, _, body = classify(server, clip_bytes(1), path="/v1/embed")
    assert status == 200 and len(body["embedding"]) == 128
    auth = {"Authorization": f"Bearer {KEY}"}
    status, _, body = request(server["base"] + "/v1/models", headers=auth)
    assert status == 200 and body["models"][0]["num_frames"] == 8
    req = urllib.request.Request(server["base"] + "/docs", headers=auth)
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def test_server_bad_inputs_and_api_key(server):
    data = clip_bytes(2)
    cases = [(b"not a video" * 50, {}, 422), (b"", {}, 422), (data[:48] + b"\0" * 4000, {}, 422),
             (data, {"labels": ",".join(f"l{i}" for i in range(1001))}, 422), (data, {"topk": "-1"}, 422),
             (data, {"views": "9x9"}, 422), (None, {}, 422)]
    for file_bytes, fields, want in cases:
        status, _, body = classify(server, file_bytes, **fields)
        assert status == want and isinstance(body["error"], str), (fields, status, body)
    status, _, body = classify(server, data, auth=False)
    assert status == 401 and "error" in body
    assert request(server["base"] + "/healthz")[0] == 200


def test_server_sigint_drains_in_flight_request_and_exits_0(server):
    out = {}

    def slow():   # 4 clips x 3 crops: the longest request
        out["answer"] = classify(server, clip_bytes(3), views="4x3")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.05)
    server["proc"].send_signal(signal.SIGINT)
    t.join(120)
    assert out["answer"][0] == 200 and out["answer"][2]["top"][0]["label"] == label_of(EXAMPLES[3])
    assert server["proc"].wait(120) == 0
    assert os.listdir(server["uploads"]) == []   # no temporary file left behind


def test_server_through_ray_serves_proxy():
    """--ingress proxy (what more replicas or a cluster use): Ray Serve's HTTP proxy forwards to the replica."""
    s = start_server("--ingress", "proxy")
    try:
        status, _, body = classify(s, clip_bytes(4))
        assert status == 200 and body["top"][0]["label"] == label_of(EXAMPLES[4])
        assert classify(s, b"not a video" * 50)[0] == 422
        assert logged(s, "proxy ingress")
        s["proc"].send_signal(signal.SIGINT)
        assert s["proc"].wait(120) == 0
    finally:
        stop_server(s)

