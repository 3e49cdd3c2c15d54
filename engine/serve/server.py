"""Start `xclip-engine serve`: Ray (private, or a cluster's), Ray Serve's HTTP proxy on host:port,
the deployment; block until SIGINT/SIGTERM; then drain in-flight requests and stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

from .app import API_KEY_ENV, Settings

APP_NAME = "xclip-engine"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


DIRECT_INGRESS_RAY = (2, 56)   # the first Ray whose Serve has the throughput-optimized mode


def ingress_mode(ingress: str, ray_address: str | None, replicas: int, ray_version: str | None = None) -> str:
    """Where requests enter: "direct" (the one replica listens on host:port itself) or "proxy" (Ray
    Serve's HTTP proxy listens and forwards each request to a replica by a Ray call). auto: direct
    with a private Ray, one replica and a Ray that has the mode, else proxy. Raises ValueError for a
    direct that cannot be. `ray_version`: the installed Ray's (default: read it)."""
    if ray_version is None:
        import ray

        ray_version = ray.__version__
    recent = tuple(int(p) for p in ray_version.split(".")[:2] if p.isdigit()) >= DIRECT_INGRESS_RAY
    possible = ray_address is None and replicas == 1 and recent
    if ingress == "auto":
        return "direct" if possible else "proxy"
    if ingress == "direct" and not possible:
        if not recent:
            raise ValueError(f"--ingress direct needs Ray {'.'.join(map(str, DIRECT_INGRESS_RAY))} or later (this "
                             f"is {ray_version}): `pip install -U 'ray[serve]'`, or use --ingress proxy")
        raise ValueError("--ingress direct needs a private Ray (no --ray) and --replicas 1: with more replicas "
                         "something must spread requests over them, which is Ray Serve's proxy (--ingress proxy)")
    return ingress


def answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether host:port answers GET /healthz with 200 within timeout_s (0.0.0.0 / :: asked on loopback)."""
    import urllib.request

    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{target}]' if ':' in target else target}:{port}/healthz"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def direct_ingress_env(port: int) -> dict:
    """Ray Serve's throughput-optimized mode (Ray's "high throughput" guide): the ingress replica runs
    its own HTTP server, so a request skips the proxy's HTTP parsing and the proxy-to-replica Ray call
    (measured on 2 cores, one client: 39 ms of CPU per request through the proxy, 21-22 direct).
    Serve gives direct-ingress replicas a port from a range: [port, port + 1) hands the one replica
    the user's port. No load balancer sits in
    front, so a stopping replica needs no deregistration window: it drains its in-flight requests only.
    The mode would also send the replica's prints and stderr into Serve's log files at INFO, below our
    WARNING level: its "replica ready" line and a failed load's traceback would vanish; they stay on stderr."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_LOG_TO_STDERR": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
            # a freed port is otherwise held back 150 s (for a load balancer's stale entries): a replica
            # that Serve restarts after a crash would find its one port quarantined and fail to start
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def _say(msg: str) -> None:
    print(f"xclip-engine serve: {msg}", file=sys.stderr, flush=True)


def run_server(model_src: str | None, labels: list[str] | None, host: str = "127.0.0.1", port: int = 8000,
               replicas: int = 1, max_batch: int = 8, batch_wait_ms: float = 10.0, max_upload_mb: float = 64.0,
               ray_address: str | None = None, max_queue: int = 64, decode_timeout_s: float = 30.0,
               num_cpus: int | None = None, ready_timeout_s: float = 600.0, backbone: str | None = None,
               labels_from: str | None = None, ingress: str = "auto") -> int:
    """Serve until stopped; the exit status (0 stopped cleanly, 1 failed to start, 2 usage).
    `backbone`: an official EVL .pth's CLIP backbone (xe.load's backbone=); `labels_from`: the option
    that gave `labels` ("--labels" or "--labels-file"; a closed-set model takes class names from a file only);
    `ingress`: auto, direct or proxy (ingress_mode)."""
    try:
        mode = ingress_mode(ingress, ray_address, replicas)
    except ValueError as e:
        _say(str(e))
        return 2
    if port == 0:   # any free port, named in the "serving on" line
        port = free_port(host)
    if ray_address is None and not port_free(host, port):
        _say(f"cannot listen on {host}:{port}: the address is in use (pick another --port)")
        return 2
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            _say("second signal: stopping now")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from .deployment import XclipDeployment

    settings = Settings(labels=labels, labels_from=labels_from, max_upload_mb=max_upload_mb,
                        decode_timeout_s=decode_timeout_s, max_queue=max_queue,
                        api_key=os.environ.get(API_KEY_ENV) or None)
    cpus = num_cpus if num_cpus is not None else max(os.cpu_count() or 1, replicas)
    if ray_address:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    else:   # a private local Ray: never a cluster that RAY_ADDRESS happens to name
        # Serve reads its mode from the environment of its controller and replicas (ray.init's
        # runtime_env reaches them); this process's own handle keeps the default mode.
        env = direct_ingress_env(port) if mode == "direct" else None
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env} if env else None)
    try:
        # direct: the proxy still starts (Serve always runs one) but on a spare port; the replica has port
        proxy_port = free_port(host) if mode == "direct" else port
        serve.start(http_options=HTTPOptions(host=host, port=proxy_port), logging_config={"log_level": "WARNING"})
        deployment = XclipDeployment.options(
            num_replicas=replicas,
            # Serve's own limits sit above the app's admission count, so a full replica answers the
            # app's 503 with Retry-After; Serve's queue only catches what the proxy holds back.
            max_ongoing_requests=max_queue + 8, max_queued_requests=max(16, 2 * max_queue * replicas),
            # Ray sets a replica's OMP_NUM_THREADS (torch's threads) to its num_cpus: on a private Ray the
            # replicas share this machine's cores (one replica: all of them; at B/32 on 2 cores, 1 CPU
            # held the server to 2.2 req/s, 57% of xe.infer); on a cluster each takes 1 CPU of its node
            ray_actor_options={"num_cpus": 1 if ray_address else (max(1, cpus // replicas) if cpus >= replicas
                                                                   else cpus / replicas)})
        # a private Ray: the replicas share this machine's cores (a cluster's replicas count their node's own)
        decode_workers = None if ray_address else max(1, min(8, cpus // replicas - 1))
        app = deployment.bind(model_src, settings, max_batch, batch_wait_ms / 1000.0, decode_workers=decode_workers,
                              backbone=backbone)
        handle = serve.run(app,
                           name=APP_NAME, route_prefix="/", blocking=False)
        deadline = time.monotonic() + ready_timeout_s
        while not stop.is_set():
            status = handle.status.remote().result()
            if status["error"]:
                _say(status["error"] if status.get("usage_error") else f"the model failed to load: {status['error']}")
                return 2
            if status["ready"]:
                break
            if time.monotonic() > deadline:
                _say(f"the model did not load within {ready_timeout_s:g} s")
                return 1
            stop.wait(0.5)
        if not stop.is_set() and mode == "direct" and not answers(host, port, 30):
            # the replica is ready but nothing answers on the port: Serve did not take the mode
            _say(f"the model is loaded but nothing answers on {host}:{port} (Ray Serve's direct ingress did not "
                 "start); run again with --ingress proxy")
            return 1
        if not stop.is_set():
            _say(f"serving on http://{host}:{port} ({replicas} replica(s), {mode} ingress, max batch {max_batch}, "
                 f"wait {batch_wait_ms:g} ms; API docs at /docs{'; API key required' if settings.api_key else ''})")
        while not stop.wait(0.5):
            pass
        _say("stopping: draining in-flight requests")
        return 0
    finally:
        try:
            serve.delete(APP_NAME)   # replicas finish their in-flight requests (graceful shutdown)
            serve.shutdown()
        finally:
            ray.shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
            _say("stopped")
