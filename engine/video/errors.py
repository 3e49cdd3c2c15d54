"""What a video that cannot be used raises, and the advice every such error carries."""

from __future__ import annotations

import contextlib
import os

import av

REENCODE = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


class VideoError(Exception):
    """A video file that cannot be used; ``.path`` names it and the message says what to do."""

    def __init__(self, path, message: str = ""):
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if message else self.path)

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (self.path, self.message)


class TruncatedVideoWarning(RuntimeWarning):
    """A video answered from fewer frames than its container declares (a truncated file); the
    message names the file and both counts (``DecodeStats.warning``)."""


@contextlib.contextmanager
def no_av_errors(path):
    """Last safety net: an FFmpeg error that slipped past the reader's own handling still names the file."""
    try:
        yield
    except av.FFmpegError as e:
        raise VideoError(path, f"decoding failed ({e.__class__.__name__}: {e}); " + REENCODE) from None
