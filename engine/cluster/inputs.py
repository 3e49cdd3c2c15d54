"""Inputs of a Ray run: the paths and folders of the plain run, plus manifests.

A manifest is an input file named *.txt or *.lst (one path per line; blank lines and lines
starting with # skipped), *.csv (the column "path", else the first column) or *.parquet (the
column "path", else the first string column). Relative paths in a manifest are relative to the
manifest's folder (joined and normalized). Its paths join the others and go through the same discovery
(engine/io/inputs.py): sorted, de-duplicated, folders searched, missing files answered with an
error. Manifests are read on the driver only, before the dataset is built.
"""

from __future__ import annotations

import csv
import os

MANIFEST_EXTENSIONS = (".txt", ".lst", ".csv", ".parquet")


def is_manifest(item) -> bool:
    item = os.fspath(item)
    return item.lower().endswith(MANIFEST_EXTENSIONS) and os.path.isfile(item)


def read_manifest(path: str) -> list[str]:
    folder = os.path.dirname(path)
    low = path.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = table.column_names
        name = "path" if "path" in names else next(
            (n for n in names if str(table.schema.field(n).type) in ("string", "large_string")), None)
        if name is None:
            raise ValueError(f"manifest {path}: no 'path' column and no column of strings")
        values = [v for v in table.column(name).to_pylist() if v]
    elif low.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        col = header.index("path") if "path" in header else 0
        body = rows[1:] if "path" in header else rows
        values = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        with open(path, encoding="utf-8-sig") as f:
            values = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [v if os.path.isabs(v) else os.path.normpath(os.path.join(folder, v)) for v in values]


def expand_manifests(items) -> list:
    """Inputs with each manifest replaced by the paths it lists."""
    out = []
    for item in items:
        if is_manifest(item):
            out.extend(read_manifest(os.fspath(item)))
        else:
            out.append(item)
    return out
