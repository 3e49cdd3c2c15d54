"""Results of `xclip-engine infer` / `xe.infer`: Prediction, the output writers, --resume, --shard.

JSON lines: one object per input, `{"path": ..., "top": [{"label": ..., "score": ...}], "error": null}`
(or a --window timeline with its "path" and "error"), written and flushed as soon as it is known,
so that a killed run leaves every answer it produced on disk, plus at most one cut-off last line.

Resume (`read_for_resume`, then append): an input is done when the file holds a line for it with
`"error": null`. Failed inputs are tried again (a file that failed on a busy network share or
before a fix usually succeeds later): their old lines are dropped when the file is rewritten, so
the file keeps exactly one line per input. The cut-off last line of a killed run is dropped and
that input redone, but only in a file known to be ours (`repair_tail`: its sidecar names this
run, engine/io/output.py). Any other line that is not a result row (a JSON object with a "path"
string and an "error" that is null or a string) means the file is not ours: we stop rather than
rewrite it, and the file is left byte for byte as it was.

Shards: input i of the sorted list belongs to shard i % N. With N > 1 each shard writes its own
file, `out.jsonl` -> `out.shard-I-of-N.jsonl`, so that shards never write to one file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .atomic import atomic_write


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)   # (label, softmax score), best first
    error: str | None = None
    # An answer given despite a problem, e.g. a truncated file answered from the frames that
    # survived (engine.video.reader DecodeStats.warning); None for a healthy video.
    warning: str | None = None

    def to_dict(self) -> dict:
        row = {"path": self.path, "top": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.top],
               "error": self.error}
        if self.warning is not None:
            # only when set: rows of healthy videos (and existing output files) keep their exact keys
            row["warning"] = self.warning
        return row


class ResultsFileError(ValueError):
    """An --output file that --resume cannot use; the message names it and says what to do."""


class ShardError(ValueError):
    """A bad --shard value or torchrun environment; the message says what is expected."""


# ---- shards ----------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 0 <= I < N."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ShardError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 0/4 (shard 0 of 4)") from None
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"--shard {text!r}: need I/N with N >= 1 and 0 <= I < N (shards are numbered from 0), "
                         f"e.g. 0/{max(count, 2)}")
    return index, count


def shard_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when both are set, as torchrun does; else None."""
    rank, world = environ.get("RANK"), environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        return parse_shard(f"{rank}/{world}")
    except ShardError:
        raise ShardError(f"the environment has RANK={rank!r} and WORLD_SIZE={world!r} (torchrun's), which do not "
                         "make a shard: need 0 <= RANK < WORLD_SIZE; unset them or pass --shard I/N") from None


def take_shard(paths: list[str], index: int, count: int) -> list[str]:
    """The inputs of shard `index` of `count`: every one whose position % count == index."""
    return list(paths[index::count])


def shard_output_path(path: str, index: int, count: int) -> str:
    """`out.jsonl` -> `out.shard-I-of-N.jsonl` when count > 1; the path itself otherwise."""
    if count <= 1:
        return path
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f"{stem}.shard-{index}-of-{count}{ext}")


# ---- writing -----------------------------------------------------------------------------------

def jsonl_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


class JsonlWriter:
    """One JSON object per line, flushed at once: a killed run loses at most the line in flight."""

    def __init__(self, out):
        self.out = out

    def __call__(self, row: dict) -> None:
        self.out.write(jsonl_line(row))
        self.out.flush()


FORMATS = ("table", "jsonl", "csv")   # and "json", another name of jsonl (it always wrote JSON lines)


def row_writer(fmt: str, out):
    """A function that writes one result row (a Prediction's to_dict(), or a timeline dict) to the
    open text file `out` in format `fmt` and flushes it. csv writes its header at once."""
    fmt = "jsonl" if fmt == "json" else fmt
    if fmt == "jsonl":
        return JsonlWriter(out)
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(["path", "rank", "label", "score", "error"])

        def write_csv(row):
            if row["error"]:
                w.writerow([row["path"], "", "", "", row["error"]])
            for rank, t in enumerate(row.get("top") or (), 1):
                w.writerow([row["path"], rank, t["label"], f"{t['score']:.6f}", ""])
            out.flush()
        return write_csv
    if fmt != "table":
        raise ValueError(f"fmt {fmt!r} is not one of table, json, jsonl, csv")

    def write_table(row):
        if row["error"]:
            out.write(f"{row['path']}\n  ERROR: {row['error']}\n")
        else:
            out.write(f"{row['path']}\n" + "".join(f"  {t['score']:7.2%}  {t['label']}\n" for t in row["top"]))
        out.flush()
    return write_table


# ---- resume ------------------------------------------------------------------------------------

def _key(path: str) -> str:
    # the same file however it was spelled (./a.mp4, a.mp4) when resumed from the same folder
    return os.path.normpath(os.path.abspath(path))


def _is_row(row) -> bool:
    # what our writers produce: a Prediction's to_dict() or a timeline, both with "path" and "error"
    return (isinstance(row, dict) and isinstance(row.get("path"), str) and "error" in row
            and (row["error"] is None or isinstance(row["error"], str)))


def read_for_resume(output: str, paths: list[str], repair_tail: bool = False) -> set[str]:
    """Prepare `output` for appending and return the subset of `paths` already answered there.

    The file is rewritten (atomically) without the failed lines of inputs that are in `paths`,
    which this run answers again, and, with `repair_tail` (the file is known to be ours), without
    a cut-off last line. A line that is not a result row raises ResultsFileError before anything
    is written. A missing file: nothing answered.
    """
    try:
        with open(output, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"--resume: cannot read {output} ({e}); pass the JSON lines file of an earlier run, "
                               "or drop --resume to start again") from None
    lines = text.split("\n")
    cut_tail = lines[-1] != ""   # no newline at the end: the last write of a killed run was cut
    if not cut_tail:
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not _is_row(row):
                raise ValueError("not a result row")
        except ValueError:
            if repair_tail and cut_tail and number == len(lines):
                continue          # the cut-off line of our killed run: that input is redone
            cut = (" (the last line, without a newline: cut off, but the file has no sidecar naming this run, "
                   "so it is not repaired)" if cut_tail and number == len(lines) else "")
            raise ResultsFileError(
                f"--resume: {output} line {number} is not a result line of `xclip-engine infer --format jsonl` "
                f"({line[:80]!r}){cut}; the file was left as it is. Pass the right file, or --overwrite to "
                "replace it") from None
        rows.append((line, row))

    todo = {_key(p) for p in paths}
    answered, keep = set(), []
    for line, row in rows:
        key = _key(row["path"])
        if row.get("error") is None:
            if key in answered:
                continue          # a duplicate answer: keep the first only
            answered.add(key)
        elif key in todo:
            continue              # a failure this run tries again: its new line replaces this one
        keep.append(line + "\n")
    _rewrite(output, keep)
    return {p for p in paths if _key(p) in answered}


def _rewrite(path: str, lines: list[str]) -> None:
    """Replace `path` by `lines` atomically: a kill during the rewrite leaves the old file whole."""
    atomic_write(path, lambda f: f.writelines(lines), text=True, keep_mode=True)
