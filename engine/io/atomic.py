"""Atomic file replacement: the one helper behind every file the project writes in place
(checkpoints, export manifests and engines, cached graphs, `infer --resume` results, configs).

The new content goes to a temporary file in the same folder, is flushed to disk, then renamed over
the old file (a rename within one file system is atomic on POSIX and Windows): a kill at any point
leaves either the old file or the new one, whole, never a mix. A failed write removes its
temporary file, so nothing that looks like progress is left behind.
"""

from __future__ import annotations

import os


def atomic_write(path: str, write, *, text: bool = False, keep_mode: bool = False) -> str:
    """Replace `path` by what `write(f)` writes to an open file (binary, or UTF-8 text when `text`).
    `keep_mode`: the new file keeps the old one's permission bits."""
    def produce(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") if text else open(tmp, "wb") as f:
            write(f)

    mode = os.stat(path).st_mode & 0o7777 if keep_mode and os.path.exists(path) else None
    write_via_temp(path, produce, mode=mode)
    return path


def write_via_temp(path: str, produce, *, tmp: str | None = None, mode: int | None = None):
    """Replace `path` by the file `produce(tmp)` writes at the temporary path `tmp`, for writers
    that take a file name rather than an open file (safetensors' save_file, ONNX Runtime's
    optimized_model_filepath). Returns what `produce` returns.

    `tmp`: the temporary name (default `path + ".tmp"`; must be in `path`'s folder so the rename
    stays within one file system). `mode`: permission bits for the new file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tmp or path + ".tmp"
    try:
        result = produce(tmp)
        _fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # a failed write (disk full, Ctrl-C) must not leave a temp file that looks like progress
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)
    return result


def _fsync_file(path: str) -> None:
    # the data must be on disk before the rename makes it the file: a crash right after the rename
    # must not leave an empty or partial file under the final name
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # folders cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
