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


def infer(inputs, model=None, labels=None, *, topk: int = 5, views: str = "1x1", window: float | None = None,
          stride: float | None = None, output=None, fmt: str = "jsonl", resume: bool = False,
          overwrite: bool = False, shard=None, batch_size: int = 8, workers: int = 2, decoder: str = "auto",
          backend: str = "auto", precision: str | None = None, device=None, glob=None,
          plot: str | None = None) -> Inference:
    """Classify videos (files, or folders searched recursively) and yield one result dict each.

    model: a loaded `Model`, or anything `xe.load` takes (None: the bundled demonstration model),
        loaded with `backend`, `precision` and `device` (which must stay at their defaults when a
        Model is given: it is already loaded).
    labels: a list of label strings; None: the model's own label set.
    topk, views ("1x1" | "4x3"), batch_size, workers (decode threads, at least 1; at most 4 per core
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

    Bad arguments raise at once (ValueError; ShardError and ResultsFileError are ValueErrors);
    decoding and scoring start on the first `next()`. The returned generator also tells what it
    does: `.paths` (this shard's inputs), `.todo` (those it answers), `.skipped` (already answered,
    with resume), `.found` (every input discovered), `.shard` (I, N), `.output` (the file written)
    and `.model`.
    """
    return Inference(inputs, model, labels, topk=topk, views=views, window=window, stride=stride, output=output,
                     fmt=fmt, resume=resume, overwrite=overwrite, shard=shard, batch_size=batch_size,
                     workers=workers, decoder=decoder, backend=backend, precision=precision, device=device,
                     glob=glob, plot=plot)


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
    if views != "1x1":
        raise ValueError("window classifies each window with one view: leave views at '1x1'")
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("plot needs matplotlib: `pip install matplotlib`")
    return window, stride


class Inference(Generator):
    """The generator `infer` returns: rows as they come, plus what the run covers (see `infer`)."""

    def __init__(self, inputs, model, labels, *, topk, views, window, stride, output, fmt, resume, overwrite,
                 shard, batch_size, workers, decoder, backend, precision, device, glob, plot):
        from .decode_ahead import check_decode_args
        from .io.inputs import discover_inputs
        from .io.output import OutputFile, check_not_an_input

        fmt = "jsonl" if fmt == "json" else fmt   # one format, two names
        if fmt not in FORMATS:
            raise ValueError(f"fmt {fmt!r} is not one of table, json, jsonl, csv")
        self.window, self.stride = _check_window(window, stride, views, fmt, plot)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers ({workers!r}) must be a whole number, at least 1 (decode threads)")
        check_decode_args(topk, views, batch_size, workers, decoder)
        writes_path = output is not None and not hasattr(output, "write")
        if resume and not (writes_path and fmt == "jsonl"):
            raise ValueError("resume continues a JSON lines file: pass output=PATH with fmt 'jsonl'")
        if overwrite and not writes_path:
            raise ValueError("overwrite replaces an output file: pass output=PATH")
        self.shard = index, count = _shard(shard)

        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
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
        try:
            self._prepare(model, labels, backend, precision, device, resume,
                          dict(topk=topk, views=views, window=self.window, stride=self.stride))
        except BaseException:
            self._release()
            raise
        self._args = dict(topk=topk, views=views, batch_size=batch_size, workers=workers, decoder=decoder)
        self._plot, self._fmt, self._out = plot, fmt, output
        self._rows = self._run()

    def _prepare(self, model, labels, backend, precision, device, resume, run_args):
        from .decode_ahead import model_labels
        from .io.output import identity

        self.model = _load(model, backend, precision, device)
        self.labels = model_labels(self.model, labels)
        self.timings: dict = {}   # decode_s, wait_s, model_s, videos (engine/decode_ahead.py)
        self.skipped = set()
        if self._file is not None:
            self._file.check_identity(identity(self.model, self.labels, **run_args))
            if resume:
                self.skipped = read_for_resume(self.output, self.paths, repair_tail=self._file.ours)
        self.todo = [p for p in self.paths if p not in self.skipped]

    def _release(self):
        file = getattr(self, "_file", None)   # None when __init__ stopped before the output was checked
        if file is not None:
            file.release()

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
        out, complete = self._out, False
        try:
            if self._file is not None:
                # opened on the first next(), so that a run that never starts leaves no file behind
                out = self._file.open()
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

    def _answers(self):
        a = self._args
        if self.window is not None:
            from .video.timeline import timeline_rows

            yield from timeline_rows(self.model, self.todo, self._errors, self.labels, self.window, self.stride,
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


def _load(model, backend, precision, device):
    from .api import Model, load

    if isinstance(model, Model):
        if backend != "auto" or precision is not None or device is not None:
            raise ValueError("backend, precision and device choose how xe.load loads a model; this one is loaded "
                             "already: pass its source instead, or leave them out")
        return model
    return load(model, backend=backend, device=device, precision=precision)
