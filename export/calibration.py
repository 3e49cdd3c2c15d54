"""The calibration inputs of `export --int8`: a handful of clips, preprocessed the model's way.

    pixels = calibration_pixels(config, clips_dir=None, count=8)    # [N, T, 3, S, S] float32
    feeds = video_feeds(model, pixels, labels)                       # for quantize.quantize_static_int8

Static int8 fixes each activation's scale ahead of time from what it saw here, so the clips should
look like the videos the model will see: `--calibrate DIR` takes the user's own clips (up to `count`,
the first in sorted order; clips that do not decode are skipped with a note). Without clips, a
built-in set is drawn: the synthetic "shapes" clips of the bundled models' training data
(train/synthetic_render.py), rendered and encoded here, so they pass through the same decoder and
preprocessing as a user's video. X-CLIP's video graph also takes text features: those of the
model's labels (or Kinetics-400's), as many as CALIBRATION_LABELS, computed by the reference model.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

DEFAULT_CLIPS = 8
CALIBRATION_BATCH = 2      # videos per calibration run (each run records every activation: memory grows with it)
CALIBRATION_LABELS = 32
BUILTIN_SEED = 20261202


class CalibrationError(ValueError):
    """No usable calibration clips: the message names the folder and what to do."""


def builtin_clips(folder: str, count: int, frames: int = 32, size: int = 256) -> list[str]:
    """Render `count` shapes clips (every colour, shape and motion in turn, seeded) as MP4s in `folder`."""
    from xclip_engine.train.synthetic_render import COLOURS, MOTIONS, SHAPES, encode_mp4, render_clip, sample_spec

    rng = np.random.default_rng(BUILTIN_SEED)
    colours, motions = list(COLOURS), list(MOTIONS)
    paths = []
    for i in range(count):
        spec = sample_spec(rng, colours[i % len(colours)], SHAPES[i % len(SHAPES)], motions[i % len(motions)],
                           size, frames, distractors=i % 3)
        path = os.path.join(folder, f"calibration_{i:02d}.mp4")
        encode_mp4(render_clip(spec), path, fps=8)
        paths.append(path)
    return paths


def user_clips(clips_dir: str) -> list[str]:
    from xclip_engine.engine.io.inputs import discover_inputs

    if not os.path.isdir(clips_dir):
        raise CalibrationError(f"--calibrate {clips_dir}: not a folder; give a folder of video clips like the ones "
                               "the model will classify (a handful is enough: 8 are used by default)")
    found = discover_inputs([clips_dir])
    paths = [p for p in found.paths if p not in found.errors]
    if not paths:
        raise CalibrationError(f"--calibrate {clips_dir}: no video files in it; give a folder of clips, or leave "
                               "--calibrate out to use the built-in calibration clips")
    return paths


def calibration_pixels(config, clips_dir: str | None = None, count: int = DEFAULT_CLIPS, echo=print) -> torch.Tensor:
    """[N, T, 3, S, S]: one view of each calibration clip, preprocessed as `config`'s family wants."""
    from xclip_engine.engine.config import evl_preprocessing, xclip_preprocessing
    from xclip_engine.engine.video.reader import read_video

    if count < 1:
        raise CalibrationError(f"--calibrate-clips {count}: give at least 1 clip")
    spec = evl_preprocessing(config) if getattr(config, "family", "xclip") == "evl" else xclip_preprocessing(config)
    with tempfile.TemporaryDirectory(prefix="xclip-calibration-") as tmp:
        if clips_dir is None:
            echo(f"calibrating int8 on {count} built-in clips (pass --calibrate DIR to use clips of your own) ...")
            paths = builtin_clips(tmp, count)
        else:
            paths = user_clips(clips_dir)
            echo(f"calibrating int8 on {min(count, len(paths))} of the {len(paths)} clips in {clips_dir} ...")
        views, skipped = [], []
        for path in paths:
            if len(views) == count:
                break
            try:
                views.append(read_video(path, preprocessing=spec, views="1x1")[0])
            except Exception as e:    # a clip that does not decode is skipped, named in the note below
                skipped.append(f"{os.path.basename(path)} ({type(e).__name__}: {str(e)[:80]})")
    if skipped:
        echo(f"skipped {len(skipped)} calibration clip(s) that did not decode: {'; '.join(skipped[:5])}")
    if not views:
        raise CalibrationError(f"--calibrate {clips_dir}: none of its clips decode ({'; '.join(skipped[:3])}); give "
                               "a folder of playable clips")
    return torch.from_numpy(np.stack(views)).float()


@torch.inference_mode()
def video_feeds(model, pixels: torch.Tensor, labels=None, tokenizer=None) -> list[dict]:
    """The video graph's feeds, CALIBRATION_BATCH videos each; X-CLIP's carry the text features of
    up to CALIBRATION_LABELS of `labels` (Kinetics-400's when None), from the reference model."""
    text = None
    if getattr(model.config, "family", "xclip") != "evl":
        from xclip_engine.engine.io.labels import load_labels
        from xclip_engine.engine.tokenizer import ClipTokenizer

        names = list(labels or load_labels("k400"))
        step = max(1, len(names) // CALIBRATION_LABELS)      # spread over the set, not its first rows
        names = names[::step][:CALIBRATION_LABELS]
        ids = (tokenizer or ClipTokenizer())(names, context_length=model.config.context_length)
        text = model.encode_text(ids).float().numpy()
    feeds = []
    for i in range(0, len(pixels), CALIBRATION_BATCH):
        feed = {"pixel_values": pixels[i:i + CALIBRATION_BATCH].numpy().astype(np.float32)}
        if text is not None:
            feed["text_features"] = text
        feeds.append(feed)
    return feeds
