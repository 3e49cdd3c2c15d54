"""The Ray Data pipeline behind `xe.infer(..., ray=ADDRESS)`.

    inputs (driver) -> decode: map_batches tasks on CPUs (concurrency `workers`)
                    -> model: map_batches over an actor pool (`actors` MIN:MAX, a GPU each where the
                       cluster has GPUs, else a CPU), the model loaded once per actor
                    -> [folder output: a writer task per block writes a part file]
                    -> rows streamed back to the driver

The driver lists the inputs; the todo list (resume already applied) becomes the dataset, so a
resumed run never schedules an answered input. Every row carries its input's position ("i");
the driver keeps the first row of each position (a retried task may deliver a block again) and
checks at the end that every position was answered.

Row order: for a file output (and the rows `xe.infer` yields) the rows come out in the plain
run's order, sorted by path: rows that arrive early wait in a buffer on the driver (small dicts,
no clips) until those before them are answered, so the file is byte for byte the plain run's.
A folder output's parts hold the rows as the workers finish them; its rows are yielded as they
come.
"""

from __future__ import annotations

import json
import math
import os

from .stages import ScoreActor, TimelineActor, decode_batch, write_part

MAX_BLOCKS = 2000   # input blocks: at most this many (more inputs: larger blocks, split into batches)
# A decode task decodes one block of up to this many model batches' worth of clips, and of at most
# DECODE_BLOCK_BYTES of decoded pixels. Ray Data pays about 15-20 ms per task and block on a 2-core
# machine: 2,000 rows of 393 KB clips through the two stages doing no work took 8.9 s in blocks of 8
# and 4.1 s in blocks of 32 (benchmarks/bench_ray.py measures this floor).
DECODE_BLOCK_BATCHES = 4
DECODE_BLOCK_BYTES = 64 * 2**20
# Where the model runs on CPUs, each model actor holds a CPU that it keeps busy only part of the time
# (the bundled model scores 170-190 videos/s per actor, decoding gives 160-200 clips/s per core),
# so a decode task asks for half a CPU: --workers decoders then run beside the actors, as the plain
# run's decode threads run beside its model thread. 2,000 clips on 2 cores, warm: 28.7 s with a whole
# CPU per decode task (one decoder beside the actor), 19.9 s with half (two). With GPUs the actors
# hold GPUs, and a decode task has a whole CPU.
CPU_DECODE_CPUS = 0.5
# MIN > 1 of --ray-actors is a promise: the run starts once MIN actors are up (their model loaded), so
# that the work is spread over them from the first batch, and a cluster that cannot hold them fails
# the run after this long, saying so. With MIN 1 nothing waits: the decode tasks start while the one
# actor loads its model.
WAIT_FOR_MIN_ACTORS_S = 600


def trace_folder() -> str | None:
    """XCLIP_ENGINE_RAY_TRACE=FOLDER: each model actor writes its node, pid and per-batch model time
    there (engine/cluster/stages.py); the tests and benchmarks/bench_ray.py read it."""
    return os.environ.get("XCLIP_ENGINE_RAY_TRACE") or None


def default_actors(ray) -> tuple[int, int]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (1, max(1, gpus))


def ray_rows(todo: list[str], known: dict, *, address: str, source, backend: str, precision, labels,
             topk: int, read_args: dict, window, stride, batch_size: int, workers: int, decoder: str,
             actors, folder: str | None = None, fmt: str = "jsonl", ordered: bool = True):
    """Yield one row dict per path of `todo` (see the module docstring for the order). `known`: the
    errors discovery already knows (answered on the driver); `read_args`: read_clip's arguments
    beyond the path, as the plain run passes them."""
    from .connect import connected

    cwd = os.getcwd()
    trace = trace_folder()
    with connected(address) as ray:
        low, high = actors or default_actors(ray)
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        items = [{"i": i, "path": p} for i, p in enumerate(todo) if p not in known]
        buffered: dict[int, dict] = {}
        done: set[int] = set()
        expect = 0

        def deliver(i, row):
            """Rows to yield now: in order (ordered) or as they come; a repeated position is dropped."""
            nonlocal expect
            if i in done or i in buffered:
                return []
            if not ordered:
                done.add(i)
                return [row]
            buffered[i] = row
            out = []
            while expect in buffered:
                out.append(buffered.pop(expect))
                done.add(expect)
                expect += 1
            return out

        for i, p in enumerate(todo):
            if p in known:
                row = {"path": p, "error": known[p]} if window is not None else {"path": p, "top": [],
                                                                                 "error": known[p]}
                yield from deliver(i, row)
        if items:
            # a dataset copies the process's DataContext when it is made: set before, put back after
            ctx = ray.data.DataContext.get_current()
            before = ctx.wait_for_min_actors_s
            ctx.wait_for_min_actors_s = WAIT_FOR_MIN_ACTORS_S if low > 1 else -1
            try:
                ds = _dataset(ray, items, batch_size=batch_size, workers=workers, window=window, read_args=read_args,
                              actors=(low, high), gpus=gpus, cwd=cwd, folder=folder, fmt=fmt,
                              common=dict(source=source, backend=backend, precision=precision, labels=list(labels),
                                          topk=topk, trace=trace),
                              timeline=dict(window=window, stride=stride, decoder=decoder))
            finally:
                ctx.wait_for_min_actors_s = before
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for i, text in zip(batch.column("i").to_pylist(), batch.column("row").to_pylist()):
                    yield from deliver(i, json.loads(text))
        missing = len(todo) - len(done)
        if missing:
            raise RuntimeError(f"the Ray run ended with {missing} of {len(todo)} inputs unanswered "
                               f"(first: {next(p for i, p in enumerate(todo) if i not in done)})")


def decode_block_size(n: int, batch_size: int, workers: int, read_args: dict) -> int:
    """Clips per decode task (and input block): up to DECODE_BLOCK_BATCHES model batches and
    DECODE_BLOCK_BYTES of decoded clips, yet at least 4 blocks per decode worker (work to balance
    across them and little to redo when one dies); at least one batch where the bytes allow."""
    from ..video.preprocessing import parse_views

    clips, crops = parse_views(read_args.get("views") or "1x1")
    size, frames = read_args.get("size") or 224, read_args.get("num_frames") or 8
    spec = read_args.get("preprocessing")
    if isinstance(spec, dict):   # EVL: the spec dict states its own frames and crop size
        size, frames = spec.get("crop") or size, spec.get("num_frames") or frames
    by_bytes = max(1, DECODE_BLOCK_BYTES // (clips * crops * frames * 3 * size * size * 4))
    spread = math.ceil(n / (4 * max(1, workers)))
    return max(1, min(by_bytes, max(min(batch_size, spread), min(DECODE_BLOCK_BATCHES * batch_size, spread))))


def _dataset(ray, items, *, batch_size, workers, window, read_args, actors, gpus, cwd, folder, fmt, common,
             timeline):
    """The stages over the todo list (see the module docstring)."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    block = decode_block_size(len(items), batch_size, workers, read_args) if window is None else batch_size
    ds = ray.data.from_items(items, override_num_blocks=min(MAX_BLOCKS, math.ceil(len(items) / block)))
    # a GPU per model actor where the cluster has GPUs, else a CPU; Ray Data spreads the actors over
    # the nodes (its default scheduling strategy, SPREAD)
    where = dict(num_gpus=1) if gpus else dict(num_cpus=1)
    pool = ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    if window is None:
        ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=block,
                            num_cpus=1 if gpus else CPU_DECODE_CPUS, compute=TaskPoolStrategy(size=workers),
                            fn_kwargs=dict(read_args=read_args, cwd=cwd))
        ds = ds.map_batches(ScoreActor, batch_format="pyarrow", batch_size=batch_size, compute=pool,
                            fn_constructor_kwargs=common, **where)
    else:   # each actor decodes and classifies the windows of its videos, as the plain run does
        ds = ds.map_batches(TimelineActor, batch_format="pyarrow", batch_size=batch_size, compute=pool,
                            fn_constructor_kwargs=dict(common, **timeline, cwd=cwd), **where)
    if folder is not None:
        ds = ds.map_batches(write_part, batch_format="pyarrow", batch_size=None, num_cpus=0.25,
                            fn_kwargs=dict(folder=folder, fmt=fmt))
    return ds
