"""Label sets: the bundled lists (Kinetics-400/600, HMDB-51, UCF-101) and users' own files.

A label set is a list of class names; X-CLIP's official evaluation feeds the bare name as the
text prompt. Files are either the `id,name` CSV of the official repo or one label per line.
"""

from __future__ import annotations

import csv
import os
from importlib import resources

BUNDLED = {
    "k400": "kinetics_400_labels.csv",
    "k600": "kinetics_600_labels.csv",
    "hmdb51": "hmdb_51_labels.csv",
    "ucf101": "ucf_101_labels.csv",
}
ALIASES = {"kinetics400": "k400", "kinetics-400": "k400", "kinetics600": "k600", "kinetics-600": "k600",
           "hmdb": "hmdb51", "hmdb-51": "hmdb51", "ucf": "ucf101", "ucf-101": "ucf101"}


def parse_labels(text: str) -> list[str]:
    """'cooking, dancing,surfing' -> ['cooking', 'dancing', 'surfing']; empty items are errors."""
    labels = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in labels):
        raise ValueError(f"--labels {text!r}: give a comma-separated list of non-empty labels, "
                         "e.g. --labels \"cooking, dancing, surfing\"")
    return labels


def _read_lines(lines: list[str], origin: str) -> list[str]:
    rows = [ln.rstrip("\r\n") for ln in lines]
    rows = [r for r in rows if r.strip()]
    if not rows:
        raise ValueError(f"{origin}: no labels in the file; write one label per line or an id,name CSV")
    if rows[0].strip().lower().replace(" ", "") == "id,name":   # the official CSV layout
        out = {}
        for n, row in enumerate(csv.reader(rows[1:]), start=2):
            if len(row) < 2 or not row[0].strip().isdigit() or not row[1].strip():
                raise ValueError(f"{origin}, line {n}: expected 'id,name', got {','.join(row)!r}")
            out[int(row[0])] = ",".join(row[1:]).strip()
        if sorted(out) != list(range(len(out))):
            raise ValueError(f"{origin}: ids must run 0..{len(out) - 1} without gaps or repeats")
        return [out[i] for i in range(len(out))]
    return [r.strip() for r in rows]


def load_labels(spec: str) -> list[str]:
    """A bundled set name (k400, k600, hmdb51, ucf101) or a path to a labels file."""
    key = ALIASES.get(spec.lower(), spec.lower())
    if key in BUNDLED and not os.path.exists(spec):
        text = resources.files("xclip_engine.engine").joinpath("assets", "labels", BUNDLED[key]).read_text("utf-8")
        return _read_lines(text.splitlines(), key)
    if not os.path.isfile(spec):
        raise ValueError(f"--labels-file {spec}: no such file, and not a bundled set "
                         f"({', '.join(BUNDLED)})")
    with open(spec, encoding="utf-8") as f:
        return _read_lines(f.readlines(), spec)


def check_labels(labels) -> list[str]:
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if not labels:
        raise ValueError("the label list is empty: give at least one label (--labels \"a, b\" or --labels-file)")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise ValueError(f"label {i} is {lab!r}: every label must be a non-empty string")
    return labels
