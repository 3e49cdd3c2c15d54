"""`infer --ray local` against the plain run on this machine: Ray's overhead, and the per-stage rates
that size a cluster.

    python benchmarks/bench_ray.py [--clips 200] [--size 160x120] [--seconds 2] [--batch-size 8]
        [--workers 2] [--actors 1] [--backend reference] [--model PATH]

In one run, on the same generated clips (H.264; `--distinct` encodes, the rest hard links):
- plain: `xe.infer(folder)`, wall time and its timings (model_s / videos: the model stage's videos/s),
  twice: with torch's default threads (one per core) and with one thread, as a CPU model actor
  has (Ray gives an actor of 1 CPU OMP_NUM_THREADS=1); the ratios are to the faster of the two;
- ray: `xe.infer(folder, ray="local")` twice: "cold" starts the private Ray (ray.init is in the
  time, as a user's one command pays it), "warm" runs on a Ray already started (the pipeline's own
  overhead); both answers are checked equal to the plain run's;
- the model stage per actor: videos / model seconds summed over the actors' batches (their trace,
  XCLIP_ENGINE_RAY_TRACE), at the same batch size as the plain run;
- decode: clips/s on one core (one thread, `decode_video` one clip after the other, the decode
  stage's own work per task);
- Ray Data's floor: the same number of rows through the same two stages doing no work (a task stage,
  then one actor that only imports torch), warm: what no `--ray` run of that many inputs can beat here.
Default model: the bundled demonstration model (64 px, 8 frames). Backend reference for both runs,
so that both compute the same numbers (auto may choose another path per process).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_infer_pipeline import LABELS, make_clips  # noqa: E402

import xclip_engine as xe  # noqa: E402


def timed_run(paths_dir, labels, **kw):
    t0 = time.perf_counter()
    run = xe.infer([paths_dir], labels=labels, **kw)
    rows = list(run)
    return time.perf_counter() - t0, rows, run.timings


def actor_rate(trace: str) -> tuple[float, int, int]:
    videos, model_s, actors = 0, 0.0, set()
    for name in glob.glob(os.path.join(trace, "*.jsonl")):
        with open(name) as f:
            for line in f:
                e = json.loads(line)
                actors.add(e["pid"])
                if e["event"] == "batch":
                    videos += e["videos"]
                    model_s += e["model_s"]
    return (videos / model_s if model_s else 0.0), videos, len(actors)


class _Idle:
    """The floor's model stage: an actor that imports torch (as a model actor does) and does nothing."""

    def __init__(self):
        import torch  # noqa: F401

    def __call__(self, batch):
        return batch


def ray_floor(n: int, batch_size: int, workers: int, read_args: dict) -> float:
    """Seconds for Ray Data to push n rows through the run's two stages doing no work (a task stage
    of `workers` over the run's decode blocks, then one actor that imports torch), on the Ray already
    running: the pipeline's own cost, below which no --ray run of n inputs can go on this machine."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from xclip_engine.engine.cluster.ray_data import CPU_DECODE_CPUS, decode_block_size

    block = decode_block_size(n, batch_size, workers, read_args)   # the run's blocks and CPU asks (no GPU here)
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"i": i} for i in range(n)], override_num_blocks=max(1, -(-n // block)))
    ds = ds.map_batches(lambda b: b, batch_size=block, num_cpus=CPU_DECODE_CPUS, compute=TaskPoolStrategy(size=workers))
    ds = ds.map_batches(_Idle, batch_size=batch_size, compute=ActorPoolStrategy(min_size=1, max_size=1), num_cpus=1)
    rows = sum(len(b["i"]) for b in ds.iter_batches(batch_size=None))
    assert rows == n, (rows, n)
    return time.perf_counter() - t0


def decode_rate(paths, model, n: int) -> float:
    from xclip_engine.engine.decode_ahead import decode_video

    args = dict(num_frames=model.num_frames, size=model.image_size, views="1x1", decoder="pyav", device="cpu")
    decode_video(paths[0], args)   # warm-up
    t0 = time.perf_counter()
    for p in paths[:n]:
        decode_video(p, args)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="decode threads (plain) / decode tasks (ray)")
    ap.add_argument("--actors", type=int, default=1, help="model actors (ray)")
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--model", default=None, help="a model folder; default: the bundled model")
    ap.add_argument("--labels", type=int, default=10)
    a = ap.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    width, height = (int(v) for v in a.size.split("x"))
    labels = LABELS[:a.labels] if a.model else None    # the bundled model: its own label set
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = os.path.join(tmp, "clips")
        os.makedirs(folder)
        paths = make_clips(folder, a.clips, width, height, a.seconds, a.distinct)
        common = dict(model=a.model, batch_size=a.batch_size, workers=a.workers, backend=a.backend, topk=5)
        import torch

        threads = torch.get_num_threads()
        plain = {}
        for n in (threads, 1):
            torch.set_num_threads(n)
            plain[n] = timed_run(folder, labels, **common)
        torch.set_num_threads(threads)
        best = min(plain, key=lambda n: plain[n][0])
        plain_s, plain_rows, t = plain[best]

        trace = os.path.join(tmp, "trace")
        os.environ["XCLIP_ENGINE_RAY_TRACE"] = trace
        ray_kw = dict(common, ray="local", ray_actors=f"{a.actors}:{a.actors}")
        cold_s, cold_rows, _ = timed_run(folder, labels, **ray_kw)     # starts (and stops) its own Ray
        import ray

        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        init_s = time.perf_counter() - t0
        for name in glob.glob(os.path.join(trace, "*")):
            os.remove(name)
        try:
            warm_s, warm_rows, _ = timed_run(folder, labels, **ray_kw)
            model = xe.load(a.model, backend="reference")
            floor_s = ray_floor(a.clips, a.batch_size, a.workers,
                                dict(num_frames=model.num_frames, size=model.image_size, views="1x1"))
        finally:
            ray.shutdown()
        actor_vps, actor_videos, actors = actor_rate(trace)
        decode_cps = decode_rate(paths, model, min(40, len(paths)))

    same = cold_rows == plain_rows and warm_rows == plain_rows and plain[1][1] == plain[threads][1]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"cpu: {cpu}, {os.cpu_count()} cores; clips {a.clips} ({a.size}, {a.seconds:g} s, H.264); batch "
          f"{a.batch_size}, workers {a.workers}, actors {a.actors}, backend {a.backend}, model "
          f"{a.model or 'bundled'}")
    for n, (wall, _, tn) in plain.items():
        rate = tn["videos"] / tn["model_s"] if tn["model_s"] else 0.0
        print(f"plain run, torch threads {n}: {wall:7.2f} s  ({a.clips / wall:6.1f} videos/s); model stage {rate:7.1f} "
              f"videos/s, decode_s {tn['decode_s']:.2f} s over {a.workers} threads")
    print(f"--ray local cold:           {cold_s:7.2f} s  ({a.clips / cold_s:6.1f} videos/s)  ratio "
          f"{cold_s / plain_s:.2f} (starts Ray)")
    print(f"--ray local warm:           {warm_s:7.2f} s  ({a.clips / warm_s:6.1f} videos/s)  ratio "
          f"{warm_s / plain_s:.2f} (Ray started before, ray.init took {init_s:.1f} s)")
    print(f"Ray Data's floor:           {floor_s:7.2f} s  ratio {floor_s / plain_s:.2f} (warm; the same stages doing "
          "no work, the actor importing torch)")
    print(f"model stage:                ray {actor_vps:7.1f} videos/s per actor ({actor_videos} videos, {actors} "
          "actor(s), 1 CPU each)")
    print(f"decode:                     {decode_cps:7.1f} clips/s per core (one thread, decode_video)")
    print(f"rows equal to the plain run's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
