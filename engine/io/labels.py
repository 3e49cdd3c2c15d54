"""Label sets: the bundled lists (Kinetics-400/600, HMDB-51, UCF-101) and users' own files.

A label set is a list of class names; X-CLIP's official evaluation feeds the bare name as the
text prompt. Files are either the `id,name` CSV of the official repo or one label per line, in UTF-8 (a
spreadsheet's byte-order mark is fine) or UTF-16 with a byte-order mark. Repeated labels are
merged, keeping the first, with a LabelWarning: two copies of a prompt would split its score.
"""

from __future__ import annotations

import codecs
import csv
import os
import warnings
from importlib import resources

BUNDLED = {
    "k400": "kinetics_400_labels.csv",
    "k600": "kinetics_600_labels.csv",
    "hmdb51": "hmdb_51_labels.csv",
    "ucf101": "ucf_101_labels.csv",
}
ALIASES = {"kinetics400": "k400", "kinetics-400": "k400", "kinetics600": "k600", "kinetics-600": "k600",
           "hmdb": "hmdb51", "hmdb-51": "hmdb51", "ucf": "ucf101", "ucf-101": "ucf101"}


class LabelWarning(UserWarning):
    """Something about a label set that changes what the model is asked, said in words: duplicate
    labels merged, a label longer than the text tower reads."""


def _label_key(label: str) -> str:
    # The tokenizer lower-cases and collapses whitespace (engine/tokenizer.py `clean`), so labels
    # that differ only there are the same prompt and would split one score between them.
    return " ".join(label.split()).lower()


def merge_duplicates(labels: list[str], origin: str | None = None) -> list[str]:
    """Drop repeated labels, keeping the first spelling, and warn once naming the repeats.

    Duplicates are merged rather than refused: a label set copied from a spreadsheet often repeats
    a row, and refusing would stop a whole run for it. Left in, two equal prompts share one
    probability (0.873 becomes 0.494 + 0.494) and neither reads as the answer.
    """
    seen: dict[str, str] = {}
    repeats: dict[str, int] = {}
    for lab in labels:
        key = _label_key(lab)
        if key in seen:
            repeats[seen[key]] = repeats.get(seen[key], 1) + 1
        else:
            seen[key] = lab
    if not repeats:
        return list(labels)
    shown = ", ".join(f"{lab!r} x{n}" for lab, n in list(repeats.items())[:10])
    more = f" and {len(repeats) - 10} more" if len(repeats) > 10 else ""
    where = f"{origin}: " if origin else ""
    warnings.warn(f"{where}{len(repeats)} label(s) given more than once: {shown}{more}; each is kept once "
                  f"(the first spelling), {len(seen)} labels remain, so its score is not split between copies",
                  LabelWarning, stacklevel=3)
    return list(seen.values())


def parse_labels(text: str) -> list[str]:
    """'cooking, dancing,surfing' -> ['cooking', 'dancing', 'surfing']; empty items are errors,
    repeated ones are merged (merge_duplicates)."""
    labels = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in labels):
        raise ValueError(f"--labels {text!r}: give a comma-separated list of non-empty labels, "
                         "e.g. --labels \"cooking, dancing, surfing\"")
    return merge_duplicates(labels, "--labels")


_WHAT = "a labels file is text: one label per line, or a CSV with an 'id,name' header"


def _read_lines(lines: list[str], origin: str) -> list[str]:
    rows = [ln.rstrip("\r\n") for ln in lines]
    rows = [r for r in rows if r.strip()]
    if not rows:
        raise ValueError(f"{origin}: the file has no labels (it is empty); {_WHAT}")
    if rows[0].strip().lower().replace(" ", "") == "id,name":   # the official CSV layout
        if len(rows) == 1:
            raise ValueError(f"{origin}: the file has only the 'id,name' header and no labels; add one "
                             "row per label: 0,first label")
        out = {}
        for n, row in enumerate(csv.reader(rows[1:]), start=2):
            if len(row) < 2 or not row[0].strip().isdigit() or not row[1].strip():
                raise ValueError(f"{origin}, line {n}: expected 'id,name', got {','.join(row)!r}")
            out[int(row[0])] = ",".join(row[1:]).strip()
        if sorted(out) != list(range(len(out))):
            raise ValueError(f"{origin}: ids must run 0..{len(out) - 1} without gaps or repeats")
        return [out[i] for i in range(len(out))]
    return [r.strip() for r in rows]


# Byte-order marks, longest first (the UTF-32 LE mark begins with the UTF-16 LE one). Spreadsheet
# programs write "CSV UTF-8" with a UTF-8 BOM, and "Unicode text" as UTF-16 with a BOM.
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def decode_labels_file(data: bytes, origin: str) -> str:
    """The text of a labels file: UTF-8, with or without a BOM, or UTF-16/32 with a BOM."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{origin}: not a text file (byte {e.start} is not valid {encoding.upper()}); "
                         f"{_WHAT}, saved as UTF-8 (or UTF-16 with a byte-order mark)") from None
    if "\x00" in text:   # decodes as UTF-8 but holds NULs: a binary file, or UTF-16 without a BOM
        raise ValueError(f"{origin}: not a text file (it holds NUL bytes: binary data, or UTF-16 without a "
                         f"byte-order mark); {_WHAT}, saved as UTF-8")
    return text.lstrip("\ufeff")   # a BOM left over from text that was decoded twice


def load_labels(spec: str) -> list[str]:
    """A bundled set name (k400, k600, hmdb51, ucf101) or a path to a labels file; repeated labels
    are merged with a warning (merge_duplicates)."""
    spec = os.fspath(spec)
    key = ALIASES.get(spec.lower(), spec.lower())
    if key in BUNDLED and not os.path.exists(spec):
        text = resources.files("xclip_engine.engine").joinpath("assets", "labels", BUNDLED[key]).read_text("utf-8")
        return _read_lines(text.splitlines(), key)
    if not os.path.isfile(spec):
        raise ValueError(f"--labels-file {spec}: no such file, and not a bundled set "
                         f"({', '.join(BUNDLED)})")
    try:
        with open(spec, "rb") as f:
            data = f.read()
    except PermissionError:
        raise ValueError(f"{spec}: permission denied: the labels file exists but this user cannot read it; "
                         "check the file's permissions (ls -l, chmod a+r)") from None
    except OSError as e:
        raise ValueError(f"{spec}: cannot read the labels file ({e.strerror or e})") from None
    return merge_duplicates(_read_lines(decode_labels_file(data, spec).splitlines(), spec), spec)


def check_labels(labels, merge: bool = True) -> list[str]:
    """A label list from the API: a string or a list of non-empty strings; repeats merged (a
    classifier's answer must not split one label's score over its copies). `merge=False` keeps the
    list as given: the tensor calls (encode_text, logits) return one row per label asked for."""
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if not labels:
        raise ValueError("the label list is empty: give at least one label (--labels \"a, b\" or --labels-file)")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise ValueError(f"label {i} is {lab!r}: every label must be a non-empty string")
    return merge_duplicates(labels) if merge else labels


class ClosedSetError(ValueError):
    """A closed-set model (EVL) asked to score free-text labels, or given class names of the wrong count."""


def check_class_names(labels, num_classes: int, what: str = "this model") -> list[str]:
    """Class names for a closed-set classifier of `num_classes` outputs: one name per output, in the
    order of its logits. Not merged: a repeat would shift every name after it to the wrong class."""
    labels = check_labels(labels, merge=False)
    if len(labels) != num_classes:
        raise ClosedSetError(
            f"{what} is a closed-set classifier of {num_classes} classes: it cannot score free-text labels, and "
            f"the {len(labels)} labels given do not name its classes; pass a labels file of {num_classes} names "
            f"in the order of its outputs (--labels-file FILE; k400 for a Kinetics-400 model), or none to use "
            "the class names the model came with")
    return labels
