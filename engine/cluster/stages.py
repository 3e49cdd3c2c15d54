"""What the Ray workers run: decode tasks (CPU), model actors (a GPU each where there are GPUs),
and the part-file writers of a folder output. Each stage is a `map_batches` UDF over Arrow tables.

Rows travel between the stages as Arrow columns: "i" (the input's position in the run), "path"
(as the user spelled it), then after decoding "clip" (the float32 clip's bytes), "shape",
"error" and "warning", and after the model "row" (the result row as JSON, exactly the dict the
plain run yields). A video that cannot be read is an error row (engine/decode_ahead.py
decode_video), never a failed task; a task or actor that dies is retried by Ray Data.

The model is loaded once per actor from its source (a path or registry name, never pickled from
the driver), with the run's backend (default "auto"), and the label set's text features are
computed once per actor.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa

DECODED = pa.schema([("i", pa.int64()), ("path", pa.string()), ("clip", pa.large_binary()),
                     ("shape", pa.list_(pa.int64())), ("error", pa.string()), ("warning", pa.string())])
ANSWERED = pa.schema([("i", pa.int64()), ("path", pa.string()), ("row", pa.string())])


def enter(cwd: str | None) -> None:
    """Ray workers start in a folder of their own: relative input paths are the driver's, so read
    them from its working folder (where it exists on this node), and errors name them as spelled."""
    if cwd and os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def decode_batch(batch: pa.Table, read_args: dict, cwd: str | None) -> pa.Table:
    """The decode stage (a Ray task on a CPU): paths -> clips or errors, with the plain run's decoder."""
    from ..decode_ahead import decode_video

    enter(cwd)
    cols = {name: [] for name in DECODED.names}
    for i, path in zip(batch.column("i").to_pylist(), batch.column("path").to_pylist()):
        clip, err, warn = decode_video(path, read_args)
        if clip is not None:
            clip = np.ascontiguousarray(clip, dtype=np.float32)
        cols["i"].append(i)
        cols["path"].append(path)
        cols["clip"].append(clip.tobytes() if clip is not None else None)
        cols["shape"].append(list(clip.shape) if clip is not None else None)
        cols["error"].append(err)
        cols["warning"].append(warn)
    return pa.table(cols, schema=DECODED)


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:   # not in a Ray worker (a unit test calls the stage directly)
        return ""


class _Actor:
    """Loads the model once; `trace` (a folder, or None) gets one JSON line per event: this
    actor's node and pid when ready, then each batch's size and model time (tests and the
    benchmark read it: which nodes ran the model, which process to kill, videos/s per actor)."""

    def __init__(self, source, backend, precision, labels, trace):
        from ..api import load

        t0 = time.perf_counter()
        # source: {"source", "backbone"} (engine/pipeline.py _ray_source); backbone: an EVL .pth's CLIP
        self.model = load(source["source"], backend=backend, precision=precision, backbone=source["backbone"])
        self.labels = list(labels)
        self._trace = None
        if trace:
            os.makedirs(trace, exist_ok=True)
            self._trace = os.path.join(trace, f"actor-{os.getpid()}-{time.time_ns()}.jsonl")
        self.node = _node()
        self.trace(event="ready", load_s=round(time.perf_counter() - t0, 4), backend=self.model.backend_note)

    def trace(self, **what):
        if self._trace is None:
            return
        with open(self._trace, "a", encoding="utf-8") as f:
            f.write(json.dumps({"node": self.node, "pid": os.getpid(), "time": time.time(), **what}) + "\n")


class ScoreActor(_Actor):
    """The model stage: decoded clips -> result rows, one model call per batch (as the plain run)."""

    def __init__(self, source, backend, precision, labels, topk, trace=None):
        super().__init__(source, backend, precision, labels, trace)
        from ..decode_ahead import _Scorer

        self.clock = {"decode_s": 0.0, "wait_s": 0.0, "model_s": 0.0, "videos": 0}
        # once per actor; a closed-set model (EVL) has no text: its labels name its classes
        text = None if getattr(self.model, "closed_set", False) else self.model.encode_text(self.labels)
        self.score = _Scorer(self.model, text, self.labels, min(topk, len(self.labels)), self.clock)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = []
        for _, path, clip, shape, err, warn in zip(*(batch.column(n).to_pylist() for n in DECODED.names)):
            array = np.frombuffer(clip, np.float32).reshape(shape) if clip is not None else None
            items.append((path, array, err, warn))
        before, videos = self.clock["model_s"], self.clock["videos"]
        rows = [p.to_dict() for p in self.score(items)]
        self.trace(event="batch", videos=self.clock["videos"] - videos, rows=len(rows),
                   model_s=round(self.clock["model_s"] - before, 6), paths=[r["path"] for r in rows])
        return pa.table({"i": batch.column("i").to_pylist(), "path": [r["path"] for r in rows],
                         "row": [json.dumps(r, ensure_ascii=False) for r in rows]}, schema=ANSWERED)


class TimelineActor(_Actor):
    """--window on Ray: each actor decodes and classifies the windows of its videos (as the plain run)."""

    def __init__(self, source, backend, precision, labels, topk, window, stride, decoder, cwd, trace=None):
        super().__init__(source, backend, precision, labels, trace)
        self.args = dict(window=window, stride=stride, topk=topk, decoder=decoder)
        self.cwd = cwd

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..video.timeline import timeline_rows

        enter(self.cwd)
        paths = batch.column("path").to_pylist()
        a = self.args
        from ..api import ClosedSetScoring

        # timelines score labels X-CLIP's way; a closed-set model is seen through that (as the plain run)
        scorer = ClosedSetScoring(self.model) if getattr(self.model, "closed_set", False) else self.model
        rows = list(timeline_rows(scorer, paths, {}, self.labels, a["window"], a["stride"], a["topk"], a["decoder"]))
        self.trace(event="batch", videos=len(rows), rows=len(rows), paths=paths)
        return pa.table({"i": batch.column("i").to_pylist(), "path": paths,
                         "row": [json.dumps(r, ensure_ascii=False) for r in rows]}, schema=ANSWERED)


def write_part(batch: pa.Table, folder: str, fmt: str) -> pa.Table:
    """The writer stage of a folder output: the block's rows -> one part file, named by the inputs
    it holds (a retried task writes the same name again, atomically: never a second copy)."""
    from .folder_output import write_part_file

    write_part_file(folder, fmt, batch.column("i").to_pylist(),
                    [json.loads(r) for r in batch.column("row").to_pylist()])
    return batch
