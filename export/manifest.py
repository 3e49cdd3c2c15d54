"""The manifest of an export folder: everything a runtime needs besides the graphs themselves.

    DIR/manifest.json   this file's content (format, family, config, preprocessing, graphs, versions)
    DIR/text.fp32.onnx  DIR/video.fp32.onnx   (+ .fp16 / .int8 variants, TensorRT .plan files)
    DIR/vocab.json DIR/merges.txt            the tokenizer vocabulary (ClipTokenizer.save_vocabulary)
    DIR/cache/                               ONNX Runtime's optimized graphs, made on first load

An EVL export (family "evl", closed set) has the video graph only and no vocabulary; its labels are
the class names, one per logit. A manifest without "family" is X-CLIP's (written before EVL).

`read_manifest` refuses anything it cannot serve with a message that names the folder, the file
and what to do: a missing or unreadable manifest, another format version, a graph file that is
missing or whose size differs from the one written (a partial copy), a file name that leaves the
folder (absolute, `..`, or through a symlink) or a file that is a symlink.

It checks sizes only, which costs nothing; `verify_file` checks content: the loaders
(runtime.load_runtime, ort_runner.GraphSession, trt_runner.TrtNet) call it on every file they are
about to read, before anything built from that file is trusted (the ORT cache included). The
sha256 in the manifest is an integrity check against damaged, partial or edited copies, not
authentication: whoever can write the graphs can write the manifest too.

Hashing costs about 0.4 s per 500 MB (a B/32 video graph, page-cached, one core), so a repeat load
of an unchanged folder takes the hash from DIR/cache/hashes.json instead, keyed by the file's
(size, mtime_ns, ctime_ns, inode). A same-size edit in place changes mtime and ctime; a replaced or
copied file is a new inode with a new ctime, and ctime cannot be set back by any tool (touch -r and
rsync -t restore mtime only). The one gap is an edit within the timestamp granularity of the hash
(git's "racy" case): a stat taken less than RACY_NS (50 ms; 2 s on whole-second filesystems)
after the file last changed is not recorded, so that file is hashed again next time. What the
stat key cannot see: a write to the disk that bypasses the filesystem, or a clock set back; both
outside what this check is for (a damaged or edited copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

from xclip_engine.engine.checkpoint import CheckpointError
from xclip_engine.engine.config import EVLConfig, XCLIPConfig, config_from_dict, evl_preprocessing, xclip_preprocessing
from xclip_engine.engine.io.atomic import atomic_write

from .graphs import family_of, roles_of

CACHE_DIR = "cache"           # the folder's derived files: ORT's optimized graphs, verified hashes
HASHES = "hashes.json"        # in CACHE_DIR: name -> stat key + sha256, see verify_file
FORMAT = "xclip-engine-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
ROLES = ("text", "video")      # X-CLIP's graphs; Manifest.roles has the ones of the folder's family


class ExportFolderError(CheckpointError):
    """An export folder that cannot be served; the message names the folder, the file and the fix."""


def _reexport_hint(folder: str) -> str:
    return f"re-export it: xclip-engine export --model SOURCE --out {folder}"


def preprocessing(config: XCLIPConfig | EVLConfig) -> dict:
    """The test-time preprocessing the graphs expect (the family's own), written out for other runtimes."""
    return evl_preprocessing(config) if family_of(config) == "evl" else xclip_preprocessing(config)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    return {"file": name, "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


# A stat this recent may be followed by an edit within the same timestamp tick that leaves mtime
# and ctime as they were: not recorded. Linux stamps files from a clock of one-jiffy ticks (<= 10 ms);
# a filesystem with whole-second stamps (FAT, some network mounts) gets 2 s.
RACY_NS = 50_000_000
RACY_COARSE_NS = 2_000_000_000
_memo: dict[tuple, str] = {}     # this process's verified hashes, for folders it cannot write


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class _Hashes:
    """DIR/cache/hashes.json: the sha256 of each file as it was when hashed, keyed by its stat."""

    def __init__(self, folder: str):
        self.folder, self.path = folder, os.path.join(folder, CACHE_DIR, HASHES)
        try:
            with open(self.path, encoding="utf-8") as f:
                self.table = json.load(f)
            if not isinstance(self.table, dict):
                self.table = {}
        except (OSError, ValueError):
            self.table = {}

    def get(self, name: str, st: os.stat_result) -> str | None:
        row = self.table.get(name)
        if isinstance(row, dict) and row.get("stat") == _stat_key(st) and isinstance(row.get("sha256"), str):
            return row["sha256"]
        return _memo.get((os.path.realpath(os.path.join(self.folder, name)), *_stat_key(st)))

    def put(self, name: str, st: os.stat_result, digest: str) -> None:
        changed = max(st.st_mtime_ns, st.st_ctime_ns)
        coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
        if time.time_ns() - changed < (RACY_COARSE_NS if coarse else RACY_NS):
            return
        _memo[(os.path.realpath(os.path.join(self.folder, name)), *_stat_key(st))] = digest
        if not os.path.isdir(os.path.dirname(self.path)):
            # cache/ is made by the loaders that may write the folder (ort_runner._writable); a
            # folder they leave alone (read-only, a shared store) keeps only this process's memo
            return
        self.table[name] = {"stat": _stat_key(st), "sha256": digest}
        # best effort: another process may write it at once (one of the two rows is lost: it is
        # hashed again next time)
        try:
            atomic_write(self.path, lambda f: json.dump(self.table, f, indent=1), text=True)
        except OSError:
            pass


def hash_file(folder: str, name: str) -> str:
    """The sha256 of folder/name, from cache/hashes.json when the file's stat is the one recorded."""
    path = os.path.join(folder, name)
    hashes = _Hashes(folder)
    st = os.stat(path)
    known = hashes.get(name, st)
    if known is not None:
        return known
    digest = sha256_file(path)
    if _stat_key(os.stat(path)) == _stat_key(st):     # changed while being read: not recorded
        hashes.put(name, st, digest)
    return digest


def verify_file(folder: str, entry: dict, what: str) -> str:
    """folder/entry["file"] checked against the manifest's sha256 before it is read; returns the sha256.

    The entry passed read_manifest's checks (a safe name, no symlink, the right size); this is the
    content check, the one that catches a file changed in place or replaced by one of the same size.
    """
    name = _check_file(folder, entry, what)
    want = entry["sha256"]
    got = hash_file(folder, name)
    if got != want:
        raise ExportFolderError(
            f"{os.path.join(folder, name)}: its sha256 is {got[:16]}..., the manifest says {want[:16]}... "
            f"(the {what}): the file was changed or damaged after export (its size is right, so it is not a "
            f"partial copy); copy the whole folder again from where it was exported, or {_reexport_hint(folder)}")
    return got


@dataclass
class Manifest:
    folder: str
    config: XCLIPConfig | EVLConfig
    graphs: dict                                    # role -> precision -> file entry (+ "error")
    inputs: dict                                    # role -> input names, in order
    outputs: dict                                   # role -> output names, in order
    source: dict = field(default_factory=dict)      # what was exported: model source, kind
    versions: dict = field(default_factory=dict)
    labels: list | None = None
    tensorrt: dict | None = None                    # role -> plan entry, plus profile limits
    raw: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return family_of(self.config)

    @property
    def roles(self) -> tuple[str, ...]:
        """The graphs of the folder: ("text", "video") for X-CLIP, ("video",) for EVL."""
        return roles_of(self.family)

    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if all(p in self.graphs.get(r, {}) for r in self.roles)]

    def path(self, role: str, precision: str) -> str:
        try:
            entry = self.graphs[role][precision]
        except KeyError:
            have = ", ".join(self.precisions()) or "none"
            raise ExportFolderError(
                f"{self.folder}: has no {precision} {role} graph (precisions exported: {have}); export it with "
                f"xclip-engine export --model SOURCE --out {self.folder}"
                + (" --fp16" if precision == "fp16" else " --int8" if precision == "int8" else "")) from None
        return os.path.join(self.folder, entry["file"])

    def verified(self, role: str, precision: str) -> tuple[str, str]:
        """(path, sha256) of a graph whose content was checked against the manifest: what loaders use."""
        path = self.path(role, precision)
        return path, verify_file(self.folder, self.graphs[role][precision], f"{precision} {role} graph")


def write_manifest(folder: str, data: dict) -> str:
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **data}
    path = os.path.join(folder, MANIFEST)
    # the manifest appears last and whole: its presence marks a finished export
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False), text=True)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(folder: str, name, what: str) -> str:
    """A file name of the manifest that stays inside the folder and is not a symlink.

    Everything a loader reads is named relative to the folder and lies in it: an absolute name or
    `..` would read a file the export never wrote, and a symlink (or a symlinked subfolder) points
    wherever it was made to, so the folder would no longer be what its manifest describes. The folder
    itself may be reached through a symlink (a models/ link to a data disk): containment is judged
    from its resolved path.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise ExportFolderError(f"{folder}/{MANIFEST}: the {what} entry has no valid file name ({name!r:.80}); "
                                + _reexport_hint(folder))
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise ExportFolderError(f"{folder}/{MANIFEST}: the {what} is {name!r}, a path outside the folder; an "
                                "export folder holds its own files, named relative to it. The manifest was edited "
                                f"or not written by xclip-engine: {_reexport_hint(folder)}")
    path = os.path.join(folder, name)
    if os.path.islink(path):
        raise ExportFolderError(f"{path}: the {what} is a symlink (to {os.readlink(path)!r}); an export folder "
                                "must hold its files, not links to them: replace the link by the file it points "
                                f"to (cp --dereference), copy the whole folder again, or {_reexport_hint(folder)}")
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ExportFolderError(f"{path}: the {what} resolves to {os.path.realpath(path)}, outside the folder (a "
                                "symlinked subfolder?); copy the files into the folder itself or "
                                + _reexport_hint(folder))
    return name


def _check_file(folder: str, entry: dict, what: str) -> str:
    if not isinstance(entry, dict):
        raise ExportFolderError(f"{folder}/{MANIFEST}: the {what} entry is not a file entry ({entry!r:.80}); "
                                + _reexport_hint(folder))
    name = check_name(folder, entry.get("file"), what)
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        # without it the content cannot be checked: refused like any malformed entry
        raise ExportFolderError(f"{folder}/{MANIFEST}: the {what} entry has no valid sha256 "
                                f"({entry.get('sha256')!r:.80}); " + _reexport_hint(folder))
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ExportFolderError(f"{folder}: {name} ({what}) is missing: a partial copy or an interrupted export; "
                                f"copy the whole folder again or {_reexport_hint(folder)}")
    size = os.path.getsize(path)
    if "bytes" in entry and size != entry["bytes"]:
        raise ExportFolderError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (a truncated or "
                                f"replaced file); copy the whole folder again or {_reexport_hint(folder)}")
    return name


def read_manifest(folder: str) -> Manifest:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ExportFolderError(f"{folder}: not a folder; backends onnxruntime and tensorrt load an export folder "
                                "made by `xclip-engine export --model SOURCE --out DIR`")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        hint = (" (this looks like a model folder: export it first with `xclip-engine export --model "
                f"{folder} --out DIR`)") if os.path.isfile(os.path.join(folder, "config.json")) else ""
        raise ExportFolderError(f"{folder}: no {MANIFEST}, so not a finished export folder{hint}; "
                                + _reexport_hint(folder))
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFolderError(f"{path}: unreadable ({type(e).__name__}: {e}); {_reexport_hint(folder)}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ExportFolderError(f"{path}: not an xclip-engine export manifest (format "
                                f"{raw.get('format') if isinstance(raw, dict) else None!r}); {_reexport_hint(folder)}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        made_by = (raw.get("versions") or {}).get("xclip_engine", "an unknown version")
        raise ExportFolderError(
            f"{path}: export format version {version!r} (written by xclip-engine {made_by}); this xclip-engine "
            f"reads format version {FORMAT_VERSION}; {_reexport_hint(folder)} with this version, or load it "
            "with the xclip-engine version that wrote it")
    try:
        family = raw.get("family", "xclip")      # manifests written before EVL have none: X-CLIP
        config = config_from_dict(raw["config"], family)
        graphs, inputs, outputs = raw["graphs"], raw["inputs"], raw["outputs"]
        roles = roles_of(family)
        for role in roles:
            if not graphs.get(role):
                raise KeyError(f"graphs.{role}")
            for precision, entry in graphs[role].items():
                if precision not in PRECISIONS:
                    raise KeyError(f"graphs.{role}.{precision} (known precisions: {', '.join(PRECISIONS)})")
                _check_file(folder, entry, f"{precision} {role} graph")
            if not isinstance(inputs.get(role), list) or not isinstance(outputs.get(role), list):
                raise KeyError(f"inputs/outputs.{role}")
    except ExportFolderError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ExportFolderError(f"{path}: incomplete or malformed ({type(e).__name__}: {e}); "
                                + _reexport_hint(folder)) from None
    trt = raw.get("tensorrt")
    if trt:
        for role in roles:
            if role in trt:
                _check_file(folder, trt[role], f"TensorRT {role} engine")
    return Manifest(folder=folder, config=config, graphs=graphs, inputs=inputs, outputs=outputs,
                    source=raw.get("source") or {}, versions=raw.get("versions") or {}, labels=raw.get("labels"),
                    tensorrt=trt or None, raw=raw)
