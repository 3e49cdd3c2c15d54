"""Tiny labelled clips and run configs for the trainer tests (written into tmp_path, nothing shipped).

Class c of `write_dataset` is a clip whose background hue and moving square depend on c, so a
tiny model separates the classes in a few dozen updates; 8 frames of 48x48 H.264 each.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

COLOURS = [(200, 40, 40), (40, 60, 200), (40, 180, 60), (200, 200, 40)]


def write_class_clip(path, label: int, variant: int = 0, num_frames: int = 8, size: int = 48) -> str:
    rng = np.random.default_rng([label, variant])
    bg = np.array(COLOURS[label % len(COLOURS)], dtype=np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 8)
        for t in range(num_frames):
            img = np.empty((size, size, 3), dtype=np.int16)
            img[:] = bg + rng.integers(-20, 20, size=3)
            x = (4 + 4 * t * (1 if label % 2 == 0 else -1)) % (size - 12)   # even classes move right
            img[16:28, x:x + 12] = 255
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return str(path)


def write_labels(path, names) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    return str(path)


def write_dataset(root, num_classes: int = 2, per_class: int = 4, name: str = "train") -> dict:
    """root/videos/<name>_<c>_<k>.mp4, root/<name>.txt (official list), root/labels.csv."""
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    lines = []
    for c in range(num_classes):
        for k in range(per_class):
            rel = f"videos/{name}_{c}_{k}.mp4"
            write_class_clip(os.path.join(root, rel), c, variant=k + (100 if name != "train" else 0))
            lines.append(f"{rel} {c}\n")
    list_path = os.path.join(root, f"{name}.txt")
    with open(list_path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    labels = write_labels(os.path.join(root, "labels.csv"), [f"class {c}" for c in range(num_classes)])
    return {"root": str(root), "list": list_path, "labels": labels}


def tiny_overrides(data: dict, out, **extra) -> list[str]:
    """Overrides for a tiny, deterministic run: no mixing, no jitter randomness beyond the seeded
    crop/flip, one DataLoader process."""
    base = {
        "model.arch": "xclip-tiny-test", "data.train_list": data["list"], "data.labels": data["labels"],
        "data.workers": 0, "train.out": str(out), "train.epochs": 4, "train.batch_size": 4,
        "train.mixup": 0, "train.cutmix": 0, "train.label_smoothing": 0, "train.log_every": 1,
        "optim.lr": 2e-3, "optim.new_lr_mult": 1, "optim.warmup_epochs": 0.5, "optim.weight_decay": 0.01,
        "train.threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
