"""Atomic file replacement, shared by the trainer's checkpoints and `infer --resume`.

The new content goes to a temporary file in the same folder, is flushed to disk, then renamed over
the old file (a rename within one file system is atomic on POSIX and Windows): a kill at any point
leaves either the old file or the new one, whole, never a mix.
"""

from __future__ import annotations

import os


def atomic_write(path: str, write, *, text: bool = False, keep_mode: bool = False) -> str:
    """Replace `path` by what `write(f)` writes to an open file (binary, or UTF-8 text when `text`).
    `keep_mode`: the new file keeps the old one's permission bits."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") if text else open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_mode and os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        # a failed write (disk full, Ctrl-C) must not leave a temp file that looks like progress
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)
    return path


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
