"""`xe.infer`: the one inference pipeline, from files and folders to result rows (and a file).

    for row in xe.infer(["videos/"], labels=["cooking", "dancing"], output="out.jsonl"):
        print(row["path"], row["top"][0] if row["top"] else row["error"])

The CLI (`xclip-engine infer`) is a thin caller of it, and so is anything else that serves
results (a batch runner, a server): one place decides which inputs are read (engine/io/inputs.py),
which shard and what a resumed run skips (engine/io/results.py), how videos are decoded and scored
(engine/decode_ahead.py) or windowed (engine/video/timeline.py), and how rows are written.

Rows are dicts: `{"path", "top": [{"label", "score"}], "error"}`, or with `window` a timeline
(engine/video/timeline.py) with its "path" and "error". Every input gets exactly one row, in sorted path
order; a failing input gets its error and the others are still answered.
"""

from __future__ import annotations

import os
from collections.abc import Generator

from .io.results import FORMATS, parse_shard, read_for_resume, row_writer, shard_output_path, take_shard


def infer(inputs, model=None, labels=None, *, topk: int = 5, views: str | None = None, window: float | None = None,
          stride: float | None = None, output=None, fmt: str = "jsonl", resume: bool = False,
          overwrite: bool = False, shard=None, batch_size: int = 8, workers: int = 2, decoder: str = "auto",
          backend: str = "auto", precision: str | None = None, device=None, glob=None,
          plot: str | None = None, ray: str | None = None, ray_actors=None, backbone: str | None = None) -> Inference:
    """Classify videos (files, or folders searched recursively) and yield one result dict each.

    model: a loaded `Model`, or anything `xe.load` takes (None: the bundled demonstration model),
        loaded with `backend`, `precision` and `device` (which must stay at their defaults when a
        Model is given: it is already loaded).
    labels: a list of label strings; None: the model's own label set. A closed-set model (EVL) scores
        its own classes: labels, if given, must name them all (as many as it has classes).
    views: "NxM" (N clips x M crops: "1x1", X-CLIP's "4x3", EVL's "3x1"); None: the model's default,
        from its preprocessing (X-CLIP "1x1", EVL "3x1"). Each model reads videos with its own
        preprocessing (`Model.preprocessing`).
    topk, views, batch_size, workers (decode threads, at least 1; at most 4 per core
        and 32 run, engine/decode_ahead.py decode_threads), decoder (auto | dali | pyav):
        as `Model.classify_iter`. glob: file name patterns a folder's files must match (default:
        video extensions; engine/io/inputs.py).
    window, stride: seconds; classify windows along each video instead (one timeline row per
        video, one view per window). plot: with window, draw each timeline to this PNG (several
        videos: FILE.<video name>.png).
    output: a path (or an open text file such as sys.stdout) that the rows are also written to, in
        `fmt` (jsonl | json | csv | table), each flushed as it comes. A path that is one of the
        inputs is refused; a path that exists (and is not empty) needs resume or overwrite; the run
        locks it (a second run on it fails at once); a JSON lines output gets the sidecar
        OUTPUT.meta.json naming the run (engine/io/output.py has the rules).
    resume: continue a JSON lines `output` of an interrupted run with the same model, labels,
        topk, views and window (else refused, naming what differs): inputs answered there
        without error are skipped (not yielded), the rest is appended.
    overwrite: replace an existing `output`; the old file stays whole until every input is
        answered, then the new one is renamed over it.
    shard: "I/N" or (I, N): answer only the inputs whose position in the sorted list % N == I;
        with N > 1 the output path gets .shard-I-of-N before its extension. None: every input.
        Unlike the CLI, the API does not read torchrun's RANK/WORLD_SIZE by itself (a library call
        in one rank of a job must not silently answer a part): pass
        `shard=engine.io.results.shard_from_env()` for that.

    ray: run on Ray Data (engine/cluster/): "local" (a private Ray on this machine), "auto" (the running
        cluster, RAY_ADDRESS) or a cluster address. The same rows, output rules, resume and errors;
        decoding runs in `workers` CPU tasks, the model in an actor pool of `ray_actors` (MIN, MAX)
        or "MIN:MAX" (default 1 to the cluster's GPUs), each actor loading the model from its
        source (a Model given here: its origin) with `backend`. Inputs may also be manifests (a
        .txt/.lst list, a .csv or .parquet "path" column); `output` may be a folder (an existing
        one, a path ending in "/", or fmt "parquet") that the workers write part files to.
        Needs `pip install 'xclip-engine[ray]'`.

    Bad arguments raise at once (ValueError; ShardError and ResultsFileError are ValueErrors);
    decoding and scoring start on the first `next()`. The returned generator also tells what it
    does: `.paths` (this shard's inputs), `.todo` (those it answers), `.skipped` (already answered,
    with resume), `.found` (every input discovered), `.shard` (I, N), `.output` (the file written)
    and `.model`.
    """
    return Inference(inputs, model, labels, topk=topk, views=views, window=window, stride=stride, output=output,
                     fmt=fmt, resume=resume, overwrite=overwrite, shard=shard, batch_size=batch_size,
                     workers=workers, decoder=decoder, backend=backend, precision=precision, device=device,
                     glob=glob, plot=plot, ray=ray, ray_actors=ray_actors, backbone=backbone)


def _shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        return parse_shard(shard)
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard {shard!r}: expected 'I/N' or (I, N), e.g. '0/4' (shard 0 of 4)") from None
    return parse_shard(f"{index}/{count}")


def _check_window(window, stride, views, fmt, plot):
    if window is None:
        if stride is not None or plot is not None:
            raise ValueError("stride and plot go with window (seconds)")
        return None, None
    from .video.timeline import check_seconds

    window = check_seconds("window", window)
    stride = window if stride is None else check_seconds("stride", stride)
    if fmt != "jsonl":
        raise ValueError(f"window writes one JSON line (a timeline) per video: use fmt 'jsonl', not {fmt!r}")
    if views not in (None, "1x1"):
        raise ValueError("window classifies each window with one view: leave views at '1x1'")
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("plot needs matplotlib: `pip install matplotlib`")
    return window, stride


class Inference(Generator):
    """The generator `infer` returns: rows as they come, plus what the run covers (see `infer`)."""

    def __init__(self, inputs, model, labels, *, topk, views, window, stride, output, fmt, resume, overwrite,
                 shard, batch_size, workers, decoder, backend, precision, device, glob, plot, ray=None,
                 ray_actors=None, backbone=None):
        from .decode_ahead import check_decode_args
        from .io.inputs import discover_inputs
        from .io.output import OutputFile, check_not_an_input

        fmt = "jsonl" if fmt == "json" else fmt   # one format, two names
        self.ray, self._folder, self._backbone = ray, None, backbone
        if ray is not None:
            from .cluster import check_installed, parse_actors
            from .cluster.folder_output import is_folder_output

            check_installed()
            self._ray_actors = parse_actors(ray_actors)
            if plot is not None:
                raise ValueError("plot draws timelines on this machine: run without ray for it")
            if is_folder_output(output, fmt):
                self._folder = os.fspath(output)
            elif fmt == "parquet":
                raise ValueError("fmt 'parquet' writes a folder of part files: pass output=FOLDER/ with ray")
        elif ray_actors is not None:
            raise ValueError("ray_actors sizes the model actors of a Ray run: pass ray=ADDRESS too")
        if fmt not in FORMATS and not (self._folder is not None and fmt == "parquet"):
            raise ValueError(f"fmt {fmt!r} is not one of table, json, jsonl, csv")
        self.window, self.stride = _check_window(window, stride, views, fmt, plot)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers ({workers!r}) must be a whole number, at least 1 (decode threads)")
        check_decode_args(topk, "1x1" if views is None else views, batch_size, workers, decoder)
        writes_path = output is not None and not hasattr(output, "write") and self._folder is None
        if resume and self._folder is None and not (writes_path and fmt == "jsonl"):
            raise ValueError("resume continues a JSON lines file: pass output=PATH with fmt 'jsonl'")
        if overwrite and not writes_path and self._folder is None:
            raise ValueError("overwrite replaces an output file: pass output=PATH")
        self.shard = index, count = _shard(shard)

        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if ray is not None:
            from .cluster.inputs import expand_manifests

            inputs = expand_manifests(inputs)
        found = discover_inputs(inputs, [glob] if isinstance(glob, str) else glob)
        self.found, self._errors = found.paths, found.errors
        self.paths = take_shard(found.paths, index, count)
        self.output = shard_output_path(os.fspath(output), index, count) if writes_path else None
        self._file = None
        if self.output is not None:
            # before anything is loaded or written: an input is never overwritten, an existing file
            # never replaced unasked, and one run at a time holds the file (until it ends)
            check_not_an_input(self.output, [*found.paths, *found.errors])
            self._file = OutputFile(self.output, resume=resume, overwrite=overwrite, jsonl=fmt == "jsonl")
        if self._folder is not None:
            from .cluster.folder_output import FolderOutput

            self.output = self._folder
            check_not_an_input(os.path.join(self._folder, "_meta.json"), [*found.paths, *found.errors])
            self._folder = FolderOutput(self._folder, resume=resume, overwrite=overwrite, fmt=fmt)
        try:
            self._prepare(model, labels, backend, precision, device, resume,
                          dict(topk=topk, views=views, window=self.window, stride=self.stride))
        except BaseException:
            self._release()
            raise
        self._args = dict(topk=topk, views=self.views, batch_size=batch_size, workers=workers, decoder=decoder)
        self._plot, self._fmt, self._out = plot, fmt, output
        self._rows = self._run()

    def _prepare(self, model, labels, backend, precision, device, resume, run_args):
        from .decode_ahead import model_labels, model_views
        from .io.output import identity

        if self.ray is not None:
            # the driver's copy only tells the labels, the run's identity and the clip shape; each
            # actor loads its own from the source, with `backend`
            self._source = _ray_source(model, device, self._backbone)
            self._backend, self._precision = backend, precision
            self.model = _load(self._source["source"], _driver_backend(self._source["source"], backend), precision,
                               "cpu", self._source["backbone"])
        else:
            self.model = _load(model, backend, precision, device, self._backbone)
        self.labels = model_labels(self.model, labels)
        # None: the model's own views (EVL "3x1"); a timeline reads one view per window
        views = "1x1" if self.window is not None else model_views(self.model, run_args["views"])
        self.views = run_args["views"] = views
        self.timings: dict = {}   # decode_s, wait_s, model_s, videos (engine/decode_ahead.py)
        self.skipped = set()
        if self._file is not None:
            self._file.check_identity(identity(self.model, self.labels, **run_args))
            if resume:
                self.skipped = read_for_resume(self.output, self.paths, repair_tail=self._file.ours)
        if self._folder is not None:
            self._folder.check_identity(identity(self.model, self.labels, **run_args))
            if resume:
                self.skipped = self._folder.read_for_resume(self.paths)
        self.todo = [p for p in self.paths if p not in self.skipped]

    def _release(self):
        file = getattr(self, "_file", None)   # None when __init__ stopped before the output was checked
        if file is not None:
            file.release()
        folder = getattr(self, "_folder", None)
        if folder is not None and not isinstance(folder, str):
            folder.release()

    # the Generator protocol, by the inner generator: close() stops decoding and closes the file
    def send(self, value):
        return self._rows.send(value)

    def throw(self, *args):
        return self._rows.throw(*args)

    def close(self):
        self._rows.close()
        self._release()       # a run closed before its first row never entered _run's finally

    def __del__(self):
        self._release()       # a run dropped without close(): the lock must not outlive it

    def _run(self):
        out, complete = (self._out if self._folder is None else None), False
        try:
            if self._file is not None:
                # opened on the first next(), so that a run that never starts leaves no file behind
                out = self._file.open()
            if self._folder is not None:
                self._parts = self._folder.open()   # the workers write the parts there
            write = row_writer(self._fmt, out) if out is not None else None
            for row in self._answers():
                if write is not None:
                    write(row)
                yield row
            complete = True
        finally:
            if self._file is not None:
                try:
                    if complete:
                        self._file.commit()   # overwrite: only a complete run replaces the old file
                finally:
                    if out is not None:
                        out.close()
                    self._release()
            if self._folder is not None:
                try:
                    if complete:
                        self._folder.commit()
                finally:
                    self._release()

    def _answers(self):
        a = self._args
        if self.ray is not None:
            from .cluster.ray_data import ray_rows
            from .decode_ahead import model_read_args, model_views

            # the plain run's read_clip arguments; decoding runs on the CPU workers (PyAV, or DALI's CPU decoder)
            read_args = dict(**model_read_args(self.model), views=model_views(self.model, a["views"]),
                             decoder=a["decoder"], device="cpu")
            folder = self._folder is not None
            yield from ray_rows(self.todo, self._errors, address=self.ray, source=self._source, backend=self._backend,
                                precision=self._precision, labels=self.labels, topk=a["topk"], read_args=read_args,
                                window=self.window, stride=self.stride, batch_size=a["batch_size"],
                                workers=a["workers"], decoder=a["decoder"], actors=self._ray_actors,
                                folder=self._parts if folder else None, fmt=self._fmt, ordered=not folder)
            return
        if self.window is not None:
            from .api import ClosedSetScoring
            from .video.timeline import timeline_rows

            # timelines score labels X-CLIP's way (encode_text, then logits): a closed-set model is seen so
            scorer = ClosedSetScoring(self.model) if getattr(self.model, "closed_set", False) else self.model
            yield from timeline_rows(scorer, self.todo, self._errors, self.labels, self.window, self.stride,
                                     a["topk"], a["decoder"], self._plot)
            return
        from .decode_ahead import classify_stream
        from .io.results import Prediction

        known = self._errors
        decoded = classify_stream(self.model, (p for p in self.todo if p not in known), self.labels,
                                  timings=self.timings, **a)
        try:
            for path in self.todo:
                yield (Prediction(path, error=known[path]) if path in known else next(decoded)).to_dict()
        finally:
            decoded.close()


def _ray_source(model, device, backbone=None) -> dict:
    """What each Ray actor loads: {"source", "backbone"}: the source given (None: the bundled model)
    and an EVL backbone, or a Model's origin and backbone origin."""
    from .api import Model

    if device is not None:
        raise ValueError("device: each Ray actor takes the GPU Ray gives it (else its CPU); leave device out")
    if isinstance(model, Model):
        if not model.origin:
            raise ValueError("with ray each actor loads the model from its source: this Model has none (a random "
                             "one?); pass a path or registry name")
        return {"source": model.origin, "backbone": getattr(model, "backbone_origin", None)}
    return {"source": None if model is None else os.fspath(model),
            "backbone": None if backbone is None else os.fspath(backbone)}


def _driver_backend(source, backend):
    # the driver needs the model's labels and shapes only: the reference path, except for an export
    # folder, which only its runtimes read
    from .runtime.choice import is_export_folder

    return backend if source is not None and is_export_folder(source) else "reference"


def _load(model, backend, precision, device, backbone=None):
    from .api import Model, load

    if isinstance(model, Model):
        if backend != "auto" or precision is not None or device is not None or backbone is not None:
            raise ValueError("backend, precision, device and backbone choose how xe.load loads a model; this one is "
                             "loaded already: pass its source instead, or leave them out")
        return model
    return load(model, backend=backend, device=device, precision=precision, backbone=backbone)
