"""Which files `xclip-engine infer` reads: files and folders in, one sorted list of paths out.

Discovery only lists names (os.scandir), it never opens or probes a file: a folder of many
thousands of videos costs a directory walk, and a file that is not a usable video is answered
with its error when its turn comes, like any other input.

Rules:
* A named file is taken as given, whatever its name (the user asked for it). A named path that
  does not exist is kept too: it is answered with a "file not found" error instead of ending the
  run, so that one typo does not cost the other inputs.
* A folder is searched recursively (symbolic links to folders are not followed, so a link cycle
  cannot loop) for files whose name matches one of the ``--glob`` patterns, or, by default, has a
  known video extension. Matching is on the file name, case-insensitively (``*.mp4`` finds
  ``CLIP.MP4``); a pattern with a ``/`` is matched against the path below the folder instead.
  A folder with nothing to read is answered with an error, not silently dropped.
* The result is sorted by path string (code point order, not the shell's locale order) with
  duplicates removed (the same file named twice, or named and also found in a folder), so the
  list, and the shards cut from it, are the same on every machine for the same arguments.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ogv", ".ts", ".mts"})


@dataclass
class Inputs:
    """The paths to answer, in order, and the errors already known for some of them (a folder in
    which nothing matched is listed as a path and answered with its entry here)."""

    paths: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _matcher(patterns):
    if not patterns:
        return lambda name, rel: os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS
    lowered = [p.lower() for p in patterns]

    def match(name, rel):
        return any(fnmatch.fnmatchcase(rel.lower() if "/" in p else name.lower(), p) for p in lowered)
    return match


def _walk(folder: str, match) -> list[str]:
    found, stack = [], [(folder, "")]
    while stack:
        path, rel = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue  # an unreadable sub-folder: nothing in it can be listed (the root is checked by the caller)
        for e in entries:
            r = f"{rel}{e.name}"
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append((e.path, r + "/"))
            elif match(e.name, r):
                found.append(e.path)   # broken links included: they get their "not found" answer
    return found


def discover_inputs(items, patterns=None) -> Inputs:
    """Files and folders -> sorted, de-duplicated paths (see the module docstring)."""
    patterns = tuple(p for p in (patterns or ()) if p)
    match = _matcher(patterns)
    out: dict[str, str] = {}   # normalized absolute path -> the path as the user spelled it
    errors: dict[str, str] = {}
    for item in items:
        item = os.fspath(item)
        if not item:
            continue
        if os.path.isdir(item):
            found = _walk(item, match)
            if not found:
                errors[item] = _empty_folder_error(item, patterns)
                found = [item]
        else:
            found = [item]
        for path in found:
            out.setdefault(os.path.normpath(os.path.abspath(path)), path)
    paths = sorted(out.values())
    return Inputs(paths, {p: errors[p] for p in paths if p in errors})


def _empty_folder_error(path: str, patterns) -> str:
    what = (f"files matching {', '.join(repr(p) for p in patterns)}" if patterns
            else f"video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return f"{path}: a folder with no {what}; pass a folder of videos, or --glob PATTERN to choose the files"
