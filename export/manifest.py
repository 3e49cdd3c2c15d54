"""The manifest of an export folder: everything a runtime needs besides the graphs themselves.

    DIR/manifest.json   this file's content (format, config, preprocessing, graphs, versions)
    DIR/text.fp32.onnx  DIR/video.fp32.onnx   (+ .fp16 / .int8 variants, TensorRT .plan files)
    DIR/vocab.json DIR/merges.txt            the tokenizer vocabulary (ClipTokenizer.save_vocabulary)
    DIR/cache/                               ONNX Runtime's optimized graphs, made on first load

`read_manifest` refuses anything it cannot serve with a message that names the folder, the file
and what to do: a missing or unreadable manifest, another format version, a graph file that is
missing or whose size differs from the one written (a partial copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from xclip_engine.engine.checkpoint import CheckpointError
from xclip_engine.engine.config import XCLIPConfig, xclip_preprocessing
from xclip_engine.engine.io.atomic import atomic_write

FORMAT = "xclip-engine-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
ROLES = ("text", "video")


class ExportFolderError(CheckpointError):
    """An export folder that cannot be served; the message names the folder, the file and the fix."""


def _reexport_hint(folder: str) -> str:
    return f"re-export it: xclip-engine export --model SOURCE --out {folder}"


def preprocessing(config: XCLIPConfig) -> dict:
    """The test-time preprocessing the graphs expect, written out for other runtimes."""
    return xclip_preprocessing(config)


def file_entry(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"file": name, "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


@dataclass
class Manifest:
    folder: str
    config: XCLIPConfig
    graphs: dict                                    # role -> precision -> file entry (+ "error")
    inputs: dict                                    # role -> input names, in order
    outputs: dict                                   # role -> output names, in order
    source: dict = field(default_factory=dict)      # what was exported: model source, kind
    versions: dict = field(default_factory=dict)
    labels: list | None = None
    tensorrt: dict | None = None                    # role -> plan entry, plus profile limits
    raw: dict = field(default_factory=dict)

    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if all(p in self.graphs.get(r, {}) for r in ROLES)]

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


def write_manifest(folder: str, data: dict) -> str:
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **data}
    path = os.path.join(folder, MANIFEST)
    # the manifest appears last and whole: its presence marks a finished export
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False), text=True)


def _check_file(folder: str, entry: dict, what: str):
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ExportFolderError(f"{folder}/{MANIFEST}: the {what} entry has no valid file name ({entry!r:.80}); "
                                + _reexport_hint(folder))
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ExportFolderError(f"{folder}: {name} ({what}) is missing: a partial copy or an interrupted export; "
                                f"copy the whole folder again or {_reexport_hint(folder)}")
    size = os.path.getsize(path)
    if "bytes" in entry and size != entry["bytes"]:
        raise ExportFolderError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (a truncated or "
                                f"replaced file); copy the whole folder again or {_reexport_hint(folder)}")


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
        config = XCLIPConfig.from_dict(raw["config"])
        graphs, inputs, outputs = raw["graphs"], raw["inputs"], raw["outputs"]
        for role in ROLES:
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
        for role in ROLES:
            if role in trt:
                _check_file(folder, trt[role], f"TensorRT {role} engine")
    return Manifest(folder=folder, config=config, graphs=graphs, inputs=inputs, outputs=outputs,
                    source=raw.get("source") or {}, versions=raw.get("versions") or {}, labels=raw.get("labels"),
                    tensorrt=trt or None, raw=raw)
