"""The synthetic "shapes" video data set: classes, zero-shot hold-out, files.

Each class is colour x shape x motion, labelled "a red circle moving left"; clips are drawn and
encoded by ``synthetic_render`` (which explains why no single frame tells the motion).
``make_shapes_dataset(out, ...)`` writes, in the official X-CLIP list format
(microsoft/VideoX X-CLIP: one ``relative/path label_id`` per line, labels as an ``id,name`` CSV):

    train/<class>/<k>.mp4  val/...  test/...  zeroshot/...   H.264 clips
    labels.csv            every class, ids 0..N-1: the K training classes first, then the held-out
    labels_train.csv      ids 0..K-1, the first K rows of labels.csv
    labels_zeroshot.csv   the Z held-out classes, ids 0..Z-1 (= their labels.csv id - K)
    train.txt val.txt test.txt   ids 0..K-1: the same in labels.csv and labels_train.csv
    zeroshot.txt          ids of labels_zeroshot.csv (the official zero-shot layout: a label set
                          of its own, as UCF-101 is for a Kinetics-trained model)
    zeroshot_all.txt      the same clips with labels.csv ids (generalised zero-shot over all N)
    manifest.json README.txt   seed, parameters, classes, counts

Everything follows from the seed: each clip's RNG is keyed by (seed, split, class, index), so the
output does not depend on the number of worker processes.
"""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from .synthetic_render import COLOURS, MOTIONS, SHAPES, check_geometry, encode_mp4, render_clip, sample_spec

SPLITS = ("train", "val", "test", "zeroshot")
LISTS = ("train.txt", "val.txt", "test.txt", "zeroshot.txt", "zeroshot_all.txt")
LABEL_FILES = ("labels.csv", "labels_train.csv", "labels_zeroshot.csv")
MANIFEST, README = "manifest.json", "README.txt"
FORMAT = "xclip-engine-synthetic"
HOLDOUT_KEY = 1000   # spawn-key space of the hold-out draw, apart from the clips' split codes 0-3


class DatasetError(ValueError):
    """A bad option or output folder; the message names it and says what to do."""


@dataclass(frozen=True)
class ShapeClass:
    colour: str
    shape: str
    motion: str

    @property
    def name(self) -> str:
        return f"a {self.colour} {self.shape} {MOTIONS[self.motion]}"

    @property
    def slug(self) -> str:  # folder name: no spaces, since list lines split on whitespace
        return self.name[2:].replace(" ", "_")

    @property
    def key(self) -> tuple[int, int, int]:
        # Position in the full palette, so a clip's RNG does not depend on the chosen subset.
        return list(COLOURS).index(self.colour), SHAPES.index(self.shape), list(MOTIONS).index(self.motion)


def _pick(kind: str, given, known) -> list[str]:
    if given is None:
        return list(known)
    items = [s.strip().lower() for s in (given.split(",") if isinstance(given, str) else given)]
    bad = [s for s in items if s not in known]
    if bad or not items or len(set(items)) != len(items):
        raise DatasetError(f"--{kind} {','.join(items)}: give a comma-separated list without repeats of "
                           f"{', '.join(known)}" + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return [k for k in known if k in items]  # canonical order


def class_set(colours=None, shapes=None, motions=None) -> list[ShapeClass]:
    """All colour x shape x motion classes in canonical order, without rotating circles (a circle
    looks the same at every angle). Each argument: None (all), a list or a comma-separated string."""
    cs, ss, ms = _pick("colours", colours, list(COLOURS)), _pick("shapes", shapes, SHAPES), _pick(
        "motions", motions, list(MOTIONS))
    return [ShapeClass(c, s, m) for c, s, m in itertools.product(cs, ss, ms) if not (s == "circle" and m == "rotate")]


def _parts(c: ShapeClass) -> tuple:
    return ("colour", c.colour), ("shape", c.shape), ("motion", c.motion)


def _pairs(c: ShapeClass) -> set:
    return set(itertools.combinations(_parts(c), 2))


def choose_zeroshot(classes: list[ShapeClass], n: int, seed: int) -> list[ShapeClass]:
    """``n`` compositions to hold out of training, drawn from ``seed``.

    No two held-out classes share two of (colour, shape, motion), and every pair of parts of a
    held-out class (hence every word of its label) occurs in some training class: zero-shot then
    asks for a new combination of things the model has seen together in pairs. The draw prefers
    parts held out least so far, which spreads the held-out set over colours, shapes and motions.
    """
    n = int(n)
    if n == 0:
        return []
    if n < 0 or n >= len(classes):
        raise DatasetError(f"--zeroshot-classes {n}: must be between 0 and {len(classes) - 1} "
                           f"(the class set has {len(classes)} classes)")
    for attempt in range(100):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(HOLDOUT_KEY, attempt)))
        held, used = [], Counter()
        for _ in range(n):
            ok = [c for c in classes if c not in held
                  and all(len(set(_parts(c)) & set(_parts(h))) < 2 for h in held)]
            if not ok:
                break
            score = [sum(used[p] for p in _parts(c)) for c in ok]
            best = [c for c, s in zip(ok, score) if s == min(score)]
            pick = best[int(rng.integers(len(best)))]
            held.append(pick)
            used.update(_parts(pick))
        seen = set().union(*(_pairs(c) for c in classes if c not in held))
        if len(held) == n and all(_pairs(h) <= seen for h in held):
            return sorted(held, key=classes.index)
    raise DatasetError(f"--zeroshot-classes {n}: cannot hold out {n} compositions of these "
                       f"{len(classes)} classes so that every held-out class's words (and word pairs) "
                       "are still seen in training; ask for fewer, or add colours, shapes or motions")


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise DatasetError(f"--{name} {value}: must be an integer {rng}")
    return int(value)


def _prepare_out(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise DatasetError(f"OUT {out} is a file; give a folder (new or empty)")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise DatasetError(f"OUT {out} exists and is not empty; pass --overwrite to replace the data set "
                               "in it, or choose a new folder")
        try:
            with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
                ours = json.load(f).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:  # never delete what this command did not write
            raise DatasetError(f"OUT {out} is not empty and holds no data set written by make-dataset "
                               f"(no {MANIFEST} of ours): --overwrite only replaces such a data set; "
                               "choose a new or empty folder")
        for name in (*SPLITS, *LISTS, *LABEL_FILES, README, MANIFEST):
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(out, exist_ok=True)


def _make_clip(job) -> str:
    """Worker: one clip from its RNG key; returns its relative path."""
    out, rel, seed, split_code, key, cls, k, size, frames, fps, distractors = job
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_code, *key, k)))
    spec = sample_spec(rng, cls.colour, cls.shape, cls.motion, size, frames, distractors)
    encode_mp4(render_clip(spec), os.path.join(out, rel), fps)
    return rel


def _write_labels(path: str, names: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "name"])
        w.writerows(enumerate(names))


def _write_list(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{rel} {label}\n" for rel, label in rows)


def make_shapes_dataset(out, *, seed: int = 0, clips_per_class: int = 60, eval_clips_per_class: int = 10,
                        zeroshot_clips_per_class: int = 20, zeroshot_classes: int = 12, frames: int = 24,
                        size: int = 64, fps: int = 12, colours=None, shapes=None, motions=None,
                        distractors: int = 0, workers: int = 2, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Write the "shapes" data set into ``out`` (see the module docstring); returns the manifest.

    ``clips_per_class``: training clips per training class; ``eval_clips_per_class``: val and test
    clips each; ``zeroshot_*``: how many held-out classes and clips per held-out class;
    ``distractors``: static neutral shapes per clip (0 keeps the task easiest).
    """
    out = os.fspath(out)
    seed = _int("seed", seed, 0)
    counts = {"train": _int("clips-per-class", clips_per_class, 1),
              "val": _int("eval-clips-per-class", eval_clips_per_class, 1),
              "test": eval_clips_per_class,
              "zeroshot": _int("zeroshot-clips-per-class", zeroshot_clips_per_class, 1)}
    params = {"frames": _int("frames", frames, 1), "size": _int("size", size, 1), "fps": _int("fps", fps, 1),
              "distractors": _int("distractors", distractors, 0, 4)}
    workers = _int("workers", workers, 1)
    try:
        check_geometry(size, frames)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    classes = class_set(colours, shapes, motions)
    held = choose_zeroshot(classes, zeroshot_classes, seed)
    train_classes = [c for c in classes if c not in held]
    ordered = train_classes + held  # one id space: training classes 0..K-1, held-out K..N-1
    _prepare_out(out, overwrite)

    manifest = {
        "format": FORMAT, "format_version": 1, "dataset": "shapes", "complete": False, "seed": seed,
        "parameters": {**params, "clips_per_class": counts["train"], "eval_clips_per_class": counts["val"],
                       "zeroshot_clips_per_class": counts["zeroshot"], "zeroshot_classes": len(held),
                       "colours": sorted({c.colour for c in classes}, key=list(COLOURS).index),
                       "shapes": sorted({c.shape for c in classes}, key=SHAPES.index),
                       "motions": sorted({c.motion for c in classes}, key=list(MOTIONS).index),
                       "codec": "h264 (libx264, yuv420p, crf 18), mp4"},
        "num_classes": len(ordered), "num_train_classes": len(train_classes), "num_zeroshot_classes": len(held),
        "classes": [{"id": i, "name": c.name, "colour": c.colour, "shape": c.shape, "motion": c.motion,
                     "split": "zeroshot" if c in held else "train"} for i, c in enumerate(ordered)],
        "lists": {**{f"{s}.txt": "ids of labels.csv (0..K-1), the same as in labels_train.csv"
                     for s in ("train", "val", "test")},
                  **({"zeroshot.txt": "ids of labels_zeroshot.csv (0..Z-1); labels.csv id = id + K",
                      "zeroshot_all.txt": "the zeroshot clips with ids of labels.csv (K..N-1)"} if held else {})},
    }
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:  # marks a partial run as ours
        json.dump(manifest, f, indent=1)

    rows = {s: [] for s in SPLITS}
    jobs = []
    for label, cls in enumerate(ordered):
        for split_code, split in enumerate(SPLITS):
            if (split == "zeroshot") != (cls in held):
                continue
            os.makedirs(os.path.join(out, split, cls.slug), exist_ok=True)
            for k in range(counts[split]):
                rel = f"{split}/{cls.slug}/{k:04d}.mp4"
                rows[split].append((rel, label))
                jobs.append((out, rel, seed, split_code, cls.key, cls, k, size, frames, fps, distractors))
    _run(jobs, workers, progress)

    k_train = len(train_classes)
    _write_labels(os.path.join(out, "labels.csv"), [c.name for c in ordered])
    _write_labels(os.path.join(out, "labels_train.csv"), [c.name for c in train_classes])
    for split in ("train", "val", "test"):
        _write_list(os.path.join(out, f"{split}.txt"), rows[split])
    if held:
        _write_labels(os.path.join(out, "labels_zeroshot.csv"), [c.name for c in held])
        _write_list(os.path.join(out, "zeroshot.txt"), [(rel, lab - k_train) for rel, lab in rows["zeroshot"]])
        _write_list(os.path.join(out, "zeroshot_all.txt"), rows["zeroshot"])
    manifest["clips"] = {s: len(r) for s, r in rows.items()}
    manifest["complete"] = True
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(out, README), "w", encoding="utf-8") as f:
        f.write(_readme(manifest))
    return manifest


def _make_clips(jobs: list) -> int:
    for job in jobs:
        _make_clip(job)
    return len(jobs)


def _run(jobs: list, workers: int, progress: bool, chunk: int = 8) -> None:
    from tqdm import tqdm

    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    if workers == 1:
        with tqdm(total=len(jobs), unit="clip", file=sys.stderr, disable=not progress, desc="make-dataset") as bar:
            for part in chunks:
                bar.update(_make_clips(part))
        return
    # spawn: workers start clean (no threads or locks inherited from the caller, e.g. torch or
    # OpenCV pools). A worker that dies raises BrokenProcessPool here instead of hanging.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=ctx) as pool:
        futures = [pool.submit(_make_clips, part) for part in chunks]
        with tqdm(total=len(jobs), unit="clip", file=sys.stderr, disable=not progress, desc="make-dataset") as bar:
            for fut in as_completed(futures):
                bar.update(fut.result())


def _readme(m: dict) -> str:
    p = m["parameters"]
    held = [c["name"] for c in m["classes"] if c["split"] == "zeroshot"]
    return (
        "Synthetic 'shapes' video data set, written by `xclip-engine make-dataset shapes`.\n"
        f"seed {m['seed']}; {p['size']}x{p['size']} px, {p['frames']} frames at {p['fps']} fps, {p['codec']}; "
        f"{p['distractors']} distractor(s) per clip.\n"
        f"{m['num_classes']} classes (colour x shape x motion): {m['num_train_classes']} for training "
        f"(ids 0..{m['num_train_classes'] - 1}), {m['num_zeroshot_classes']} held out for zero-shot.\n"
        f"clips: " + ", ".join(f"{s} {n}" for s, n in m["clips"].items()) + "\n"
        "Lists: `relative/path.mp4 label_id` per line.\n"
        + "".join(f"  {name}: {what}\n" for name, what in m["lists"].items())
        + "Held-out compositions: " + ("; ".join(held) or "none") + "\n"
        "No single frame tells a clip's motion: see xclip_engine/train/synthetic_render.py.\n"
    )


DATASETS = {"shapes": make_shapes_dataset}


def make_dataset(name: str, out, **options) -> dict:
    """Write the data set ``name`` (one of DATASETS) into ``out``."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](out, **options)
