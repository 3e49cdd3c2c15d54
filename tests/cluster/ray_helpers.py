"""Helpers of the Ray tests: free ports, short temp dirs, rows, the model actors' trace."""

from __future__ import annotations

import json
import os
import socket
import tempfile

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
OBJECT_STORE = 256 * 2 ** 20
TOPK = 3
# backend "auto" picks the fastest verified path per process (fp32 or bf16 here): the runs compared
# byte for byte take the reference path, so that both compute the same numbers
REF = "reference"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmp(prefix: str) -> str:
    # Ray's socket paths live under its temp dir and must stay below ~107 characters
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def rows_of(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_same_rows(got: list[dict], want: list[dict], exact: bool = True):
    """The same rows; `exact=False`: scores within 1e-5 (a different batch size may move the last digit)."""
    if exact:
        assert got == want
        return
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert g["error"] == w["error"] and g.get("warning") == w.get("warning"), (g, w)
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]], (g, w)
        assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(g["top"], w["top"])), (g, w)


def trace_events(folder) -> list[dict]:
    events = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        events.extend(rows_of(os.path.join(folder, name)))
    return events
