"""A real two-node Ray cluster on this machine: `ray start --head` on loopback plus a second
`ray start --address`, each with its own resources, started and stopped here (free ports, a temp
dir of their own, bounded waits). The model stage runs on both nodes and the rows equal the plain run's.

How the test knows where the model ran: each model actor writes its node id
(`ray.get_runtime_context().get_node_id()`) and every batch it scored to the trace folder
(XCLIP_ENGINE_RAY_TRACE, engine/cluster/stages.py); the cluster has exactly two nodes (the head,
with the custom resource head_node, and the second, worker_node), so two distinct node ids among
the actors that scored batches means the model stage ran on both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from .ray_helpers import REF, TOPK, free_port, short_tmp, trace_events

pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
START_TIMEOUT_S = 90
OBJECT_STORE = str(200 * 2 ** 20)


def _start(args: list[str], log: str, auth: dict) -> subprocess.Popen:
    """`ray start ... --block` in a session of its own: every Ray process it starts is in its
    process group, which the teardown signals (and nothing else on the machine)."""
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1", **auth)
    with open(log, "w") as out:
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                                 "--object-store-memory", OBJECT_STORE, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def _wait_started(proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(log) as f:
            text = f.read()
        if "Ray runtime started" in text:
            return
        if proc.poll() is not None:
            pytest.fail(f"`ray start` exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"`ray start` did not start within {START_TIMEOUT_S} s:\n{text[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(1)   # the group's other processes end after the command itself
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _node_ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]


@pytest.fixture(scope="module")
def two_nodes():
    """(address, environment for a driver): the head and a second node, each with 2 CPUs."""
    temp = short_tmp("xer2-")
    port = free_port()
    procs = []
    # the cluster's own token (Ray 2.5x authenticates every connection), for both nodes and the
    # driver; the user's ~/.ray/auth_token is neither read nor written
    token = os.path.join(temp, "auth_token")
    with open(token, "w") as f:
        f.write(uuid.uuid4().hex + uuid.uuid4().hex)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    try:
        head_log = os.path.join(temp, "head.log")
        procs.append(_start(["--head", "--port", str(port), "--num-cpus", "2", "--resources", '{"head_node": 1}',
                             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                             "--ray-client-server-port", str(free_port()), "--temp-dir", temp, *_node_ports()],
                            head_log, auth))
        _wait_started(procs[0], head_log)
        worker_log = os.path.join(temp, "worker.log")
        procs.append(_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--resources",
                             '{"worker_node": 1}', *_node_ports()], worker_log, auth))
        _wait_started(procs[1], worker_log)   # started: the node has registered with the head
        yield f"127.0.0.1:{port}", auth
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_model_stage_runs_on_both_nodes_with_the_plain_rows(two_nodes, clip_dir, plain, tmp_path):
    """The command line joins the cluster as its driver (a process of its own, so that its Ray
    client starts with the cluster's token): two model actors, one CPU each, which Ray Data
    spreads over the nodes, and the stage starts once both are up (MIN of --ray-actors); batches
    of 1, so that both actors get work."""
    address, auth = two_nodes
    plain_out, _ = plain
    out, trace = tmp_path / "cluster.jsonl", tmp_path / "trace"
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1", XCLIP_ENGINE_RAY_TRACE=str(trace), **auth)
    r = subprocess.run([sys.executable, "-m", "xclip_engine.engine.cli", "infer", str(clip_dir), "--ray", address,
                        "--ray-actors", "2:2", "--batch-size", "1", "--backend", REF, "--topk", str(TOPK),
                        "--format", "jsonl", "-o", str(out)], env=env, capture_output=True, text=True,
                       timeout=240, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr[-3000:]               # two inputs are bad videos: exit status 1
    assert "videos 13, answered 11, failed 2" in r.stderr
    assert out.read_bytes() == plain_out.read_bytes()        # the plain run's file, byte for byte
    ready = {e["pid"]: e["node"] for e in trace_events(trace) if e["event"] == "ready"}
    scored_on = {e["node"] for e in trace_events(trace) if e["event"] == "batch"}
    # two distinct node ids in a cluster of two nodes: the model stage ran on both
    assert len(set(ready.values())) == 2 and scored_on == set(ready.values()), trace_events(trace)
