"""`xclip-engine serve` under load on loopback: throughput and p50/p99 latency at 1, 8, 16, 32 clients,
against `xe.infer`'s batch throughput on the same clips, and the server's memory over many requests.

    python benchmarks/bench_serve.py [--clients 1,8,16,32] [--requests 96] [--seconds 30] [--rss-requests 300]
        [--max-batch 8] [--batch-wait-ms 10] [--port 0] [--ingress auto|direct|proxy] [--infer-videos N]

The bundled demonstration model and its example clips (examples/*.mp4). The server is started here as a
subprocess (a private Ray, `--num-cpus` = this machine's cores); each client is a thread posting one clip
after another (http.client, keep-alive off, as a curl loop would); each level stops after --requests or
--seconds, whichever comes first. RSS: the replica process (the model, decoders, batch buffers) and the
sum over the server's process tree, before and after --rss-requests more requests. Per level: the mean
batch the model ran (from /v1/models) and the CPU milliseconds per request by process (the replica, Ray
Serve's proxy and controller, Ray's own daemons, this load generator). xe.infer runs once before the
server starts and twice after it stops, on as many clips as a level's requests; its median is the yardstick.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.mp4")))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def body_of(path: str) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    with open(path, "rb") as f:
        data = f.read()
    head = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n").encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def post(base: str, body: bytes, ctype: str) -> dict:
    req = urllib.request.Request(base + "/v1/classify", data=body, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def load_level(base, bodies, clients: int, requests: int, seconds: float) -> dict:
    lat, errors, lock, count = [], [0], threading.Lock(), [0]
    stop_at = time.perf_counter() + seconds

    def client(i):
        while True:
            with lock:
                if count[0] >= requests or time.perf_counter() > stop_at:
                    return
                n = count[0]
                count[0] += 1
            body, ctype = bodies[(i + n) % len(bodies)]
            t0 = time.perf_counter()
            try:
                post(base, body, ctype)
                with lock:
                    lat.append(time.perf_counter() - t0)
            except OSError:
                with lock:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3) if lat else (lambda p: float("nan"))
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "req_per_s": len(lat) / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan")}


def batching(base: str) -> tuple[int, int]:
    """(model calls, requests in them) so far, from the server's /v1/models."""
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        m = json.loads(r.read())["models"][0]
    return m["batches"], m["requests_batched"]


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(the Serve replica's RSS, the sum over pid's process tree), MiB, from /proc."""
    children, info = _proc_table()
    total = replica = 0.0
    for p in _tree(pid, children):
        rss, _, cmd = info.get(p, (0.0, 0.0, ""))
        total += rss
        replica += rss if "ServeReplica" in cmd else 0.0
    return replica, total


def _proc_table() -> tuple[dict, dict]:
    """{ppid: [pid]} and {pid: (rss MiB, cpu s, cmdline)} from /proc."""
    children: dict = {}
    info: dict = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/status") as f:
                rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS")), 0) / 1024
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
        info[int(d)] = (rss, (int(fields[11]) + int(fields[12])) / tick, cmd)
    return children, info


def _tree(pid: int, children: dict) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


# where a request's CPU goes: the server's processes by role (Ray names its workers in their cmdline)
ROLES = (("replica", "ServeReplica"), ("proxy", "ProxyActor"), ("controller", "ServeController"),
         ("raylet", "raylet"), ("gcs", "gcs_server"))


def tree_cpu_s(pid: int) -> dict:
    """CPU seconds (user + system) so far of pid's process tree by role, plus this process (the load
    generator). Counts live processes only: compare two readings of the same processes."""
    children, info = _proc_table()
    by_role: dict = {}
    for p in _tree(pid, children):
        _, cpu, cmd = info.get(p, (0.0, 0.0, ""))
        role = next((r for r, key in ROLES if key in cmd), "other")
        by_role[role] = by_role.get(role, 0.0) + cpu
    t = os.times()
    by_role["load generator"] = t.user + t.system
    return by_role


def start_server(port: int, max_batch: int, wait_ms: float, work: str, model_args=()):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "XCLIP_ENGINE_API_KEY")}
    env.update(RAY_TMPDIR=os.path.join(work, "ray"), RAY_USAGE_STATS_ENABLED="0")
    log = open(os.path.join(work, "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "xclip_engine.engine.cli", "serve", "--port", str(port),
                             "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms), *model_args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log.name}")


def infer_rates(paths, videos: int, runs: int, model_src=None, labels_file=None) -> list[float]:
    """xe.infer's batch throughput (videos/s) on `videos` clips cycled from `paths`, `runs` times."""
    import xclip_engine as xe

    model = xe.load(model_src, backend="auto")
    labels = xe.load_labels(labels_file) if labels_file else model.labels
    list(xe.infer(paths[:8], model, labels))   # warm-up
    clips = (paths * (videos // len(paths) + 1))[:videos]
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = sum(1 for _ in xe.infer(clips, model, labels, batch_size=8))
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,8,16,32")
    ap.add_argument("--requests", type=int, default=96, help="most requests per level")
    ap.add_argument("--seconds", type=float, default=30.0, help="most seconds per level")
    ap.add_argument("--rss-requests", type=int, default=300)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default=None, help="what serve --model takes (default: the bundled model)")
    ap.add_argument("--labels-file", default=None, help="label set for --model (e.g. k400)")
    ap.add_argument("--ingress", default="auto", choices=("auto", "direct", "proxy"), help="serve --ingress")
    ap.add_argument("--infer-videos", type=int, default=0,
                    help="videos per xe.infer run (default: --requests, so both see as many)")
    args = ap.parse_args()
    model_args = [*(["--model", args.model] if args.model else []),
                  *(["--labels-file", args.labels_file] if args.labels_file else []), "--ingress", args.ingress]
    infer_args = (EXAMPLES, args.infer_videos or args.requests, args.model, args.labels_file)

    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="xsb-")
    print(f"cpu: {cpu_name()}, {os.cpu_count()} cores; clips: {len(EXAMPLES)} examples; max batch "
          f"{args.max_batch}, wait {args.batch_wait_ms:g} ms")
    # xe.infer before the server starts and after it stops: this machine's speed drifts (other tenants),
    # and the median of runs on both sides of the load levels is fairer than one run after them
    before = infer_rates(infer_args[0], infer_args[1], 1, *infer_args[2:])
    t0 = time.perf_counter()
    proc, base = start_server(port, args.max_batch, args.batch_wait_ms, work, model_args)
    print(f"server ready in {time.perf_counter() - t0:.1f} s")
    try:
        bodies = [body_of(p) for p in EXAMPLES]
        load_level(base, bodies, 4, 16, 10)   # warm-up
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'mean batch':>10}")
        levels = {}
        for c in (int(x) for x in args.clients.split(",")):
            cpu0, b0 = tree_cpu_s(proc.pid), batching(base)
            r = load_level(base, bodies, c, args.requests, args.seconds)
            cpu1, b1 = tree_cpu_s(proc.pid), batching(base)
            mean_batch = (b1[1] - b0[1]) / max(1, b1[0] - b0[0])
            levels[c] = r["req_per_s"]
            n = max(1, r["requests"])
            per = {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1e3 / n for k in cpu1}
            split = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05)
            print(f"{r['clients']:7d} {r['requests']:8d} {r['errors']:6d} {r['req_per_s']:7.1f} {r['p50_ms']:8.1f} "
                  f"{r['p99_ms']:8.1f} {mean_batch:10.2f}   CPU ms/request {sum(per.values()):.1f}: {split}",
                  flush=True)
        rep0, tot0 = tree_rss_mb(proc.pid)
        r = load_level(base, bodies, 8, args.rss_requests, 120)
        rep1, tot1 = tree_rss_mb(proc.pid)
        print(f"RSS over {r['requests']} more requests (8 clients): replica {rep0:.0f} -> {rep1:.0f} MiB, "
              f"server tree {tot0:.0f} -> {tot1:.0f} MiB")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
        print(f"server stopped (exit {rc})")
    rates = before + infer_rates(infer_args[0], infer_args[1], 2, *infer_args[2:])
    print(f"xe.infer (this process, batch 8, {infer_args[1]} clips per run; one run before the server, two "
          f"after): median {statistics.median(rates):.1f} videos/s (runs {', '.join(f'{r:.1f}' for r in rates)})")
    one = levels.get(1)
    for c, rate in levels.items():
        vs_one = f"{rate / one:.2f}x the 1-client rate, " if one and c != 1 else ""
        print(f"{c} client(s): {rate:.1f} req/s = {vs_one}{100 * rate / statistics.median(rates):.0f}% of xe.infer")


if __name__ == "__main__":
    main()
