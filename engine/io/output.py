"""The --output file of `xclip-engine infer` / `xe.infer`: what a run may do to it.

Nothing is lost and nothing is silently wrong:

- An output that is one of the inputs (the same file by its real path) is refused: writing JSON
  over a video the run is about to read destroys it.
- An existing, non-empty output needs `resume` (continue it) or `overwrite` (replace it); without
  either the run stops before touching it. `overwrite` writes the new results to `FILE.tmp` and
  renames it over FILE when the run has answered every input, so FILE stays whole and unchanged
  until then; a run that stops early (an error, Ctrl-C, close()) removes FILE.tmp, and a killed
  one leaves it behind, to be replaced by the next run.
- One writer at a time: the run holds an exclusive, non-blocking `flock` on `FILE.lock` from the
  call until it ends; a second run on the same FILE fails at once, naming the file and the
  process that holds it. The lock file is removed when the run ends. (No locking where `fcntl` is
  missing, i.e. Windows.)
- A JSON lines FILE has a sidecar `FILE.meta.json` that says which run wrote it (`identity`): the
  model (its origin and kind, and an EVL model's backbone file), the sha256 of the label list, topk,
  views, window and stride. It is a separate file so that FILE stays one result per line for every
  reader. `resume` refuses a FILE whose sidecar names another run (the message lists the differing
  fields); a FILE without a sidecar is continued only when every line of it is a complete result
  row (a file of an older version), never repaired: only OUR files (sidecar present and matching)
  get their cut-off last line, which a killed run leaves, dropped (engine/io/results.py
  read_for_resume).

Paths that are not regular files (/dev/null, /dev/stdout, a pipe) are written as before, with
no lock, sidecar or temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from .atomic import atomic_write, fsync_dir
from .results import ResultsFileError

try:
    import fcntl
except ImportError:   # Windows: no flock; runs on one file are not kept apart there
    fcntl = None

META_FORMAT = "xclip-engine infer results"
IDENTITY_FIELDS = ("model", "labels_sha256", "topk", "views", "window", "stride")


# one error for every output problem (a ValueError): the message names the file and what to do
OutputFileError = ResultsFileError


def meta_path(path: str) -> str:
    return path + ".meta.json"


def lock_path(path: str) -> str:
    return path + ".lock"


def labels_sha256(labels) -> str:
    """sha256 of the label list as JSON (order matters: it is the order of the scores)."""
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=False).encode("utf-8")).hexdigest()


def identity(model, labels, *, topk: int, views: str, window, stride) -> dict:
    """What decides a run's answers, to tell whether a file may be continued by this run."""
    origin = str(getattr(model, "origin", "") or "")
    if origin and os.path.exists(origin):
        origin = os.path.realpath(origin)   # the same model however its path was spelled
    ident = {"origin": origin, "kind": str(getattr(model, "kind", "") or "")}
    backbone = getattr(model, "backbone_origin", None)
    if backbone:   # EVL from two files: another backbone is another model (absent otherwise: old files match)
        ident["backbone"] = os.path.realpath(backbone) if os.path.exists(backbone) else str(backbone)
    return {"model": ident,
            "labels_sha256": labels_sha256(labels), "topk": int(topk), "views": views,
            "window": window, "stride": stride}


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True    # it will be one
    except OSError:
        return True    # let the open report it


def check_not_an_input(output: str, inputs) -> None:
    """Refuse an output (or its sidecars) that is one of the input files, compared by real path."""
    mine = {os.path.realpath(p): p for p in (output, meta_path(output), lock_path(output), output + ".tmp")}
    for p in inputs:
        real = os.path.realpath(p)
        if real in mine:
            raise OutputFileError(f"refusing to write results to {mine[real]}: it is the input {p}, which the run "
                                  "reads (writing would destroy it); pick another --output")


def check_output_path(path: str, *, resume: bool, overwrite: bool) -> None:
    """The checks that need nothing but the path, cheap enough to run before a model loads: the
    output must not be a folder, its folder must exist, and an existing file needs resume or
    overwrite."""
    if os.path.isdir(path):
        raise OutputFileError(f"--output {path} is a folder: give a file path inside it, e.g. {path.rstrip('/')}"
                              "/results.jsonl")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputFileError(f"--output {path}: the folder {folder} does not exist; create it first or pick "
                              "another --output")
    if (_is_regular(path) and not resume and not overwrite and os.path.exists(path)
            and os.path.getsize(path) > 0):
        raise OutputFileError(
            f"{path} exists already: pass --resume (xe.infer: resume=True) to continue it, or --overwrite "
            "(overwrite=True) to replace it once the new results are complete; nothing was written")


class OutputFile:
    """One run's hold on its --output path: the lock (taken here), then `open()` on the first row,
    `commit()` when every input is answered, `release()` always (idempotent)."""

    def __init__(self, path: str, *, resume: bool, overwrite: bool, jsonl: bool):
        if resume and overwrite:
            raise OutputFileError("resume continues the output file and overwrite replaces it: pass one of them")
        check_output_path(path, resume=resume, overwrite=overwrite)
        self.path, self.resume, self.jsonl = path, resume, jsonl
        self.regular = _is_regular(path)
        self._lock_fd = None
        self._tmp = None
        self.identity: dict | None = None
        self.ours = False       # a sidecar that matches this run's identity (set by check_identity)
        if not self.regular:
            if resume:
                raise OutputFileError(f"--resume: {path} is not a regular file; resume continues a results file")
            return
        self._lock()
        try:
            self.replacing = os.path.exists(path) and os.path.getsize(path) > 0 and not resume
            if self.replacing and not overwrite:
                raise OutputFileError(
                    f"{path} exists already: pass --resume (xe.infer: resume=True) to continue it, or --overwrite "
                    "(overwrite=True) to replace it once the new results are complete; nothing was written")
        except BaseException:
            self.release()
            raise

    # ---- the lock --------------------------------------------------------------------------------

    def _lock(self) -> None:
        self._lock_fd = take_lock(lock_path(self.path), self.path)

    def release(self) -> None:
        """Remove an unfinished temporary file and drop the lock (the lock file goes too)."""
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            if not tmp[1].closed:
                tmp[1].close()
            if os.path.exists(tmp[0]):
                os.remove(tmp[0])
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            drop_lock(fd, lock_path(self.path))

    # ---- identity and resume -------------------------------------------------------------------

    def check_identity(self, ident: dict) -> None:
        """Before resuming: refuse a file another run wrote. Sets `ours` when the sidecar matches."""
        self.identity = ident
        if not (self.resume and self.regular and self.jsonl) or not os.path.exists(self.path):
            return
        name = meta_path(self.path)
        try:
            with open(name, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            return     # no sidecar: read_for_resume accepts only complete result rows
        except (OSError, ValueError) as e:
            raise OutputFileError(f"--resume: cannot read {name} ({e}), the sidecar that says which run wrote "
                                  f"{self.path}; pass --overwrite to start again") from None
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise OutputFileError(f"--resume: {name} is not the sidecar of an xclip-engine results file; "
                                  "pass --overwrite to start again, or another --output")
        differ = [k for k in IDENTITY_FIELDS if meta.get(k) != ident[k]]
        if differ:
            what = "; ".join(f"{k}: {json.dumps(meta.get(k))} there, {json.dumps(ident[k])} now" for k in differ)
            raise OutputFileError(f"--resume: {self.path} was written by another run ({what}); its answers would "
                                  f"not match this run's. Pass the same {', '.join(differ)}, --overwrite to start "
                                  "again, or another --output")
        self.ours = True

    # ---- writing -------------------------------------------------------------------------------

    def open(self):
        """The text file the rows go to (the temporary file when replacing), with the sidecar
        written first for a new JSON lines file, so that a killed run can be resumed."""
        if not self.regular:
            return open(self.path, "a" if self.resume else "w", encoding="utf-8", newline="")
        if self.replacing:
            tmp = self.path + ".tmp"
            f = open(tmp, "w", encoding="utf-8", newline="")
            self._tmp = (tmp, f)
            return f
        if self.jsonl and not self.ours:
            self._write_meta()   # a new file, or one of an older version being continued
        return open(self.path, "a" if self.resume else "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        """Every input answered: the new file replaces the old one (overwrite), then its sidecar.
        In that order: a crash in between leaves the new rows with the old sidecar, which resume
        refuses when the runs differ, rather than old rows under a new identity."""
        if self._tmp is None:
            return
        tmp, f = self._tmp
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, self.path)
        self._tmp = None
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        if self.jsonl:
            self._write_meta()
        elif os.path.exists(meta_path(self.path)):
            os.remove(meta_path(self.path))   # the file is no longer JSON lines of that run

    def _write_meta(self) -> None:
        if self.identity is None:
            return
        meta = {"format": META_FORMAT, "version": 1, **self.identity}
        atomic_write(meta_path(self.path), lambda f: json.dump(meta, f, indent=1), text=True)


def take_lock(name: str, what: str) -> int | None:
    """Hold an exclusive lock on the file `name` for the output `what` (a file or a folder); the
    lock file says which process holds it. Another holder: OutputFileError naming that process.
    Returns the descriptor to give drop_lock (None where there is no fcntl: no locking)."""
    if fcntl is None:
        return None
    for _ in range(5):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputFileError(f"cannot create the lock file {name} next to the output ({e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise OutputFileError(
                f"{what} is being written by another run (process {holder or '?'} holds {name}); wait for "
                "it to end or pick another --output") from None
        # The previous holder removes the lock file when it ends: if that happened between our
        # open and our flock, we hold a file nobody else sees. Lock the file at the name instead.
        try:
            same = os.stat(name).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputFileError(f"cannot lock {name}: other runs keep replacing it; try again")


def drop_lock(fd: int, name: str) -> None:
    """Release a take_lock lock; the file goes first, while still locked, so that a waiting
    opener sees the inode change."""
    try:
        os.remove(name)
    except OSError:
        pass
    os.close(fd)
