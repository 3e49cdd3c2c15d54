"""--output FOLDER/ on Ray: the workers write the rows to part files, for runs too large for
one file on one machine.

    FOLDER/part-<first input>-<hash>.jsonl   JSON lines, each line exactly a row of the plain run
    FOLDER/part-<first input>-<hash>.parquet the same rows as Parquet (path, top, error, warning)
    FOLDER/_meta.json                        which run wrote the folder (as OUT.meta.json)
    FOLDER/.lock                             held by the run (one run on a folder at a time)

A part is named by the inputs it holds and written atomically (a temporary name, then a
rename), so a task that Ray retries writes the same part again instead of a second copy. The
rules of a file output hold: an existing folder with parts needs resume or overwrite; resume
refuses a folder whose _meta.json names another run (model, labels, topk, views, window) and
skips the inputs answered without error in any part, dropping the failed rows it answers again
(each input keeps one row); overwrite writes the new parts under FOLDER/.incoming and replaces
the old ones only when every input is answered.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

from ..io.atomic import atomic_write
from ..io.output import IDENTITY_FIELDS, META_FORMAT, OutputFileError, drop_lock, take_lock
from ..io.results import _key, jsonl_line, read_for_resume

FOLDER_FORMATS = ("jsonl", "parquet")
META = "_meta.json"
INCOMING = ".incoming"

def is_folder_output(output, fmt: str) -> bool:
    """A folder output: an existing folder, a path ending in a separator, or --format parquet."""
    if output is None or hasattr(output, "write"):
        return False
    text = os.fspath(output)
    return os.path.isdir(text) or text.endswith(("/", os.sep)) or fmt == "parquet"


def parts(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), "part-*.jsonl"))
                  + glob.glob(os.path.join(glob.escape(folder), "part-*.parquet")))


def _parquet_schema():
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    return pa.schema([("path", pa.string()), ("top", top), ("error", pa.string()), ("warning", pa.string())])


def write_part_file(folder: str, fmt: str, indices: list[int], rows: list[dict]) -> str | None:
    if not rows:
        return None
    digest = hashlib.sha1(",".join(map(str, sorted(indices))).encode()).hexdigest()[:12]
    name = os.path.join(folder, f"part-{min(indices):09d}-{digest}.{fmt}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{"path": r["path"], "top": r.get("top") or [], "error": r.get("error"),
                                       "warning": r.get("warning")} for r in rows], schema=_parquet_schema())
        atomic_write(name, lambda f: pq.write_table(table, f))
    else:
        atomic_write(name, lambda f: f.writelines(jsonl_line(r) for r in rows), text=True)
    return name


def read_rows(folder: str) -> list[dict]:
    """Every row of every part (for tests and tools): JSON lines as written; Parquet rows with
    `warning` dropped where it is null, as the plain run's rows have it only when set."""
    rows = []
    for part in parts(folder):
        if part.endswith(".parquet"):
            import pyarrow.parquet as pq

            for r in pq.read_table(part).to_pylist():
                if r.get("warning") is None:
                    r.pop("warning", None)
                r["top"] = r.get("top") or []
                rows.append(r)
        else:
            with open(part, encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


class FolderOutput:
    """One run's hold on its output folder: lock (taken here), `check_identity`, `read_for_resume`,
    `open()` before the first part, `commit()` when every input is answered, `release()` always."""

    def __init__(self, folder: str, *, resume: bool, overwrite: bool, fmt: str):
        if resume and overwrite:
            raise OutputFileError("resume continues the output folder and overwrite replaces it: pass one of them")
        if fmt not in FOLDER_FORMATS:
            raise OutputFileError(f"--output {folder} is a folder of part files: use --format jsonl or parquet, "
                                  f"not {fmt!r}")
        self.folder = os.path.abspath(folder)
        parent = os.path.dirname(self.folder)
        if not os.path.isdir(parent):
            raise OutputFileError(f"--output {folder}: the folder {parent} does not exist; create it first")
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise OutputFileError(f"--output {folder}: not a folder")
        os.makedirs(self.folder, exist_ok=True)
        self.resume, self.fmt, self.identity = resume, fmt, None
        self._lock_fd = None
        self._lock()
        try:
            self.replacing = bool(parts(self.folder)) and not resume
            if self.replacing and not overwrite:
                raise OutputFileError(
                    f"{folder} holds part files of an earlier run: pass --resume (xe.infer: resume=True) to continue "
                    "it, or --overwrite (overwrite=True) to replace them once the new results are complete")
            self.write_to = os.path.join(self.folder, INCOMING) if self.replacing else self.folder
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        self._lock_fd = take_lock(os.path.join(self.folder, ".lock"), self.folder)

    def release(self) -> None:
        incoming = os.path.join(self.folder, INCOMING)
        if getattr(self, "replacing", False) and os.path.isdir(incoming):
            shutil.rmtree(incoming, ignore_errors=True)   # an unfinished replacement
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            drop_lock(fd, os.path.join(self.folder, ".lock"))

    def check_identity(self, ident: dict) -> None:
        self.identity = ident
        name = os.path.join(self.folder, META)
        if not self.resume or not os.path.exists(name):
            return
        try:
            with open(name, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise OutputFileError(f"--resume: cannot read {name} ({e}); pass --overwrite to start again") from None
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise OutputFileError(f"--resume: {name} is not the sidecar of xclip-engine results; pass --overwrite")
        differ = [k for k in IDENTITY_FIELDS if meta.get(k) != ident[k]]
        if differ:
            what = "; ".join(f"{k}: {json.dumps(meta.get(k))} there, {json.dumps(ident[k])} now" for k in differ)
            raise OutputFileError(f"--resume: {self.folder} was written by another run ({what}). Pass the same "
                                  f"{', '.join(differ)}, --overwrite to start again, or another --output")

    def read_for_resume(self, paths: list[str]) -> set[str]:
        """The inputs of `paths` answered without error in the parts; the failed rows of inputs in
        `paths` are dropped from their parts (this run answers them again)."""
        answered: set[str] = set()
        todo = {_key(p) for p in paths}
        for part in parts(self.folder):
            if part.endswith(".parquet"):
                answered |= self._resume_parquet(part, todo)
            else:
                answered |= {_key(p) for p in read_for_resume(part, paths)}
        return {p for p in paths if _key(p) in answered}

    @staticmethod
    def _resume_parquet(part: str, todo: set[str]) -> set[str]:
        import pyarrow.parquet as pq

        table = pq.read_table(part)
        rows = table.to_pylist()
        keep = [r for r in rows if r.get("error") is None or _key(r["path"]) not in todo]
        if len(keep) != len(rows):
            if keep:
                new = table.from_pylist(keep, schema=table.schema)
                atomic_write(part, lambda f: pq.write_table(new, f))
            else:
                os.remove(part)
        return {_key(r["path"]) for r in keep if r.get("error") is None}

    def open(self) -> str:
        """The folder the workers write parts to; the sidecar is written first (a new folder)."""
        if self.replacing:
            shutil.rmtree(self.write_to, ignore_errors=True)
            os.makedirs(self.write_to)
        else:
            self._write_meta()
        return self.write_to

    def commit(self) -> None:
        if not self.replacing:
            return
        for old in parts(self.folder):
            os.remove(old)
        for new in parts(self.write_to):
            os.replace(new, os.path.join(self.folder, os.path.basename(new)))
        shutil.rmtree(self.write_to, ignore_errors=True)
        self._write_meta()

    def _write_meta(self) -> None:
        if self.identity is None:
            return
        meta = {"format": META_FORMAT, "version": 1, **self.identity}
        atomic_write(os.path.join(self.folder, META), lambda f: json.dump(meta, f, indent=1), text=True)
