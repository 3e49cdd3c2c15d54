"""train/synthetic.py + synthetic_render.py: the "shapes" data set. Classes and the zero-shot
hold-out, motion that no single frame reveals, determinism, list files, H.264 clips, the CLI."""

import itertools
import json
import os
from dataclasses import replace

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from xclip_engine.engine.io.labels import load_labels
from xclip_engine.engine.video.reader import count_frames, read_frames, read_video
from xclip_engine.train import synthetic_render as R
from xclip_engine.train.cli_dataset import make_dataset_cmd
from xclip_engine.train.synthetic import (
    DatasetError,
    ShapeClass,
    choose_zeroshot,
    class_set,
    make_dataset,
    make_shapes_dataset,
)

TINY = dict(colours="red,blue", shapes="circle,square", motions="left,right,rotate,blink", zeroshot_classes=2,
            clips_per_class=2, eval_clips_per_class=1, zeroshot_clips_per_class=2, frames=12, size=32, fps=8)
TINY_ARGS = ["--colours", "red,blue", "--shapes", "circle,square", "--motions", "left,right,rotate,blink",
             "--zeroshot-classes", "2", "--clips-per-class", "2", "--eval-clips-per-class", "1",
             "--zeroshot-clips-per-class", "2", "--frames", "12", "--size", "32", "--fps", "8", "--quiet"]


def words(name):
    return set(name.split())


# ---------------------------------------------------------------- classes and the hold-out


def test_class_set():
    classes = class_set()
    names = [c.name for c in classes]
    assert len(names) == len(set(names)) == 4 * 3 * 8 - 4  # no rotating circles
    assert "a red circle moving left" in names and "a yellow triangle rotating" in names
    assert not any(c.shape == "circle" and c.motion == "rotate" for c in classes)
    sub = class_set("blue,red", ["square"], "blink, left")  # canonical order, whatever the order given
    assert [c.name for c in sub] == ["a red square moving left", "a red square blinking",
                                     "a blue square moving left", "a blue square blinking"]
    for kind, bad in [("colours", "red,purple"), ("shapes", "hexagon"), ("motions", "left,left")]:
        with pytest.raises(DatasetError, match=f"--{kind}"):
            class_set(**{kind: bad})


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_zeroshot_holdout(seed):
    classes = class_set()
    held = choose_zeroshot(classes, 12, seed)
    assert held == choose_zeroshot(classes, 12, seed)  # from the seed alone
    train = [c for c in classes if c not in held]
    assert len(held) == 12 and not set(held) & set(train)
    seen_words = set().union(*(words(c.name) for c in train))
    for h in held:
        assert words(h.name) <= seen_words, h.name
        for a, b in itertools.combinations(("colour", "shape", "motion"), 2):  # each word pair seen too
            assert any(getattr(t, a) == getattr(h, a) and getattr(t, b) == getattr(h, b) for t in train), (h, a, b)
    for h1, h2 in itertools.combinations(held, 2):  # no two held-out classes share two parts
        assert (h1.colour == h2.colour) + (h1.shape == h2.shape) + (h1.motion == h2.motion) < 2
    assert len({c.motion for c in held}) >= 6  # spread over the motions, not piled on one


def test_zeroshot_holdout_impossible():
    # With one shape, a held-out (colour, motion) pair is never seen in training.
    with pytest.raises(DatasetError, match="--zeroshot-classes 1: cannot hold out"):
        choose_zeroshot(class_set("red,blue", "square", "left,right"), 1, 0)
    with pytest.raises(DatasetError, match="between 0 and 3"):
        choose_zeroshot(class_set("red,blue", "square", "left,right"), 4, 0)


# ---------------------------------------------------------------- motion matters


def test_draws_do_not_depend_on_the_motion():
    """Every parameter is drawn whatever the motion: the motion only picks what moves."""
    for seed in range(5):
        specs = {m: R.sample_spec(np.random.default_rng(seed), "green", "square", m, 48, 16) for m in R.MOTIONS}
        ref = specs["blink"]
        for m, s in specs.items():
            assert replace(s, motion="blink", direction=0) == ref, m


@pytest.mark.parametrize("motion", ["left", "up", "grow", "rotate"])
def test_twins_show_the_same_frames_reversed(motion):
    """A clip and its time-reversed twin of another class (equally likely: same draws, opposite
    direction) show exactly the same frames: no frame can tell left from right, and so on."""
    spec = R.sample_spec(np.random.default_rng(3), "yellow", "triangle", motion, 48, 16, distractors=1)
    twin = R.twin(spec)
    a, b = R.render_clip(spec), R.render_clip(twin)
    assert twin.motion == R.TWIN[motion] and (twin.motion != motion or twin.direction == -spec.direction)
    np.testing.assert_array_equal(b, a[::-1])
    assert not np.array_equal(a[0], a[-1])  # the clip does change: the order carries the class


def _masks(n_per_motion, seed, size=48, frames=16):
    """Target masks [T, S, S] of clips sampled exactly as the data set samples them."""
    out = []
    for mi, motion in enumerate(R.MOTIONS):
        for k in range(n_per_motion):
            rng = np.random.default_rng([seed, mi, k])
            spec = R.sample_spec(rng, "red", ("square", "triangle")[k % 2], motion, size, frames, distractors=k % 2)
            f = R.render_clip(spec).astype(np.int16)
            out.append((mi, (np.abs(f - np.int16(spec.rgb)).max(-1) < 60).astype(np.float32)))
    return out


def _sequence_features(mask):
    """Position, log-area trends; visibility flips; frame-to-frame mask change."""
    vis = mask.sum((1, 2)) > 2
    area = np.maximum(mask.sum((1, 2)), 1)
    yy, xx = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
    t = np.nonzero(vis)[0]
    slope = lambda v: np.polyfit(t, v[t], 1)[0]
    change = [1 - np.minimum(mask[i], mask[i + 1]).sum() / np.maximum(mask[i], mask[i + 1]).sum()
              for i in range(len(mask) - 1) if vis[i] and vis[i + 1]]
    return np.array([slope((mask * xx).sum((1, 2)) / area), slope((mask * yy).sum((1, 2)) / area),
                     slope(np.log(area)), np.abs(np.diff(vis.astype(int))).sum(), np.mean(change)])


def _knn_accuracy(x_train, y_train, x_test, y_test, k):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    d = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None]
    votes = y_train[np.argpartition(d, k, axis=1)[:, :k]]
    pred = np.array([np.bincount(v, minlength=len(R.MOTIONS)).argmax() for v in votes])
    return float((pred == y_test).mean())


def test_single_frames_are_ambiguous_sequences_separate():
    """A k-NN on the whole target mask of ONE frame barely beats chance at naming the motion (it
    gets blinking right only on the frames where the shape is off, which tell neither colour nor
    shape); the same k-NN on a few statistics of the frame SEQUENCE names every motion."""
    train, test = _masks(20, 0), _masks(10, 1)
    frames = train[0][1].shape[0]
    per_frame = lambda ms: np.concatenate([np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA).ravel()
                                                     for f in m]) for _, m in ms])
    labels = lambda ms, rep: np.repeat([c for c, _ in ms], rep)
    frame_acc = _knn_accuracy(per_frame(train), labels(train, frames), per_frame(test), labels(test, frames), 15)
    seq = lambda ms: np.stack([_sequence_features(m) for _, m in ms])
    seq_acc = _knn_accuracy(seq(train), labels(train, 1), seq(test), labels(test, 1), 5)
    chance = 1 / len(R.MOTIONS)
    print(f"motion from one frame: {frame_acc:.3f} (chance {chance:.3f}); from the sequence: {seq_acc:.3f}")
    assert frame_acc < chance + 0.12
    assert seq_acc >= 0.95


def test_specs_stay_in_frame_and_blinks_alternate():
    size, frames = 64, 24
    rng = np.random.default_rng(0)
    for i in range(400):
        motion = list(R.MOTIONS)[i % len(R.MOTIONS)]
        shape = R.SHAPES[1 + i % 2] if motion == "rotate" else R.SHAPES[i % 3]
        st = R.states(R.sample_spec(rng, "blue", shape, motion, size, frames))
        reach = R.EXTENT[shape] * st["s"]
        for c in (st["x"], st["y"]):
            assert (c - reach >= R.PAD * size - 1e-9).all() and (c + reach <= (1 - R.PAD) * size + 1e-9).all()
        if motion == "blink":  # both states, and every run not cut by the clip's ends lasts >= T/4
            runs = [len(list(g)) for _, g in itertools.groupby(st["visible"])]
            assert st["visible"].any() and not st["visible"].all()
            assert min(runs[1:-1], default=frames) >= frames / 4
        else:
            assert st["visible"].all()


# ---------------------------------------------------------------- the written data set


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    manifest = make_shapes_dataset(out, seed=0, workers=1, progress=False, **TINY)
    return out, manifest


def read_list(path):
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f.read().splitlines()]


def decoded(root, rel):
    path = os.path.join(root, rel)
    return np.stack(read_frames(path, range(count_frames(path))))


def test_lists_and_labels(tiny):
    out, m = tiny
    everything, train_labels, zs_labels = (load_labels(str(out / f)) for f in
                                           ("labels.csv", "labels_train.csv", "labels_zeroshot.csv"))
    k = len(train_labels)
    assert everything == train_labels + zs_labels and len(everything) == 14 and len(zs_labels) == 2
    assert m["complete"] and m["num_classes"] == 14 and m["num_train_classes"] == k
    assert json.loads((out / "manifest.json").read_text()) == m
    for split, per_class in [("train", 2), ("val", 1), ("test", 1)]:
        rows = read_list(out / f"{split}.txt")
        assert m["clips"][split] == len(rows) == per_class * k
        assert sorted({int(i) for _, i in rows}) == list(range(k))
        for rel, i in rows:
            assert os.path.isfile(out / rel) and rel.split("/")[0] == split
            assert rel.split("/")[1] == train_labels[int(i)][2:].replace(" ", "_")  # the folder names the class
    zs, zs_all = read_list(out / "zeroshot.txt"), read_list(out / "zeroshot_all.txt")
    assert len(zs) == m["clips"]["zeroshot"] == 4 and [r for r, _ in zs] == [r for r, _ in zs_all]
    for (rel, i), (_, j) in zip(zs, zs_all):
        assert os.path.isfile(out / rel) and int(j) == int(i) + k and everything[int(j)] == zs_labels[int(i)]
    assert not set(zs_labels) & set(train_labels)
    seen = set().union(*(words(n) for n in train_labels))
    assert all(words(n) <= seen for n in zs_labels)


def test_clips_decode_with_read_video(tiny):
    out, _ = tiny
    for split in ("train", "val", "test", "zeroshot"):
        rel = read_list(out / f"{split}.txt")[0][0]
        x = read_video(str(out / rel), num_frames=8, size=32)
        assert x.shape == (1, 8, 3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
        with av.open(str(out / rel)) as c:
            stream = c.streams.video[0]
            assert c.format.name.startswith("mov,mp4") and stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p" and stream.average_rate == 8
        assert decoded(out, rel).shape == (12, 32, 32, 3)


def test_decoded_clip_is_the_rendered_clip(tiny):
    """The file holds what the spec renders (H.264 is lossy: compare within a few levels)."""
    out, _ = tiny
    rel = "train/red_square_moving_left/0001.mp4"
    label = dict(read_list(out / "train.txt"))[rel]
    assert load_labels(str(out / "labels.csv"))[int(label)] == "a red square moving left"
    c = ShapeClass("red", "square", "left")
    rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0, *c.key, 1)))
    spec = R.sample_spec(rng, "red", "square", "left", 32, 12)
    diff = np.abs(decoded(out, rel).astype(np.int16) - R.render_clip(spec).astype(np.int16))
    assert diff.mean() < 3 and np.percentile(diff, 99) < 40, (diff.mean(), np.percentile(diff, 99))


def test_encoding_is_repeatable(tmp_path):
    """x264 must give the same file for the same frames, again and again in one process (its
    AVX-512 paths did not, now and then: see synthetic_render.x264_options)."""
    clips = [R.render_clip(R.sample_spec(np.random.default_rng(i), "blue", "square", m, 32, 12))
             for i in range(3) for m in ("left", "grow", "rotate", "blink")]
    first = []
    for rep in range(4):
        junk = [np.random.bytes(1 << 18) for _ in range(rep)]  # a different heap each time
        for i, frames in enumerate(clips):
            R.encode_mp4(frames, tmp_path / "c.mp4", 8)
            data = (tmp_path / "c.mp4").read_bytes()
            if rep == 0:
                first.append(data)
            assert data == first[i], (rep, i)
        del junk


def test_same_seed_same_data_set(tiny, tmp_path):
    out, m = tiny
    again = make_shapes_dataset(tmp_path / "again", seed=0, workers=1, progress=False, **TINY)
    assert again == m
    names = ["labels.csv", "labels_train.csv", "labels_zeroshot.csv", "train.txt", "val.txt", "test.txt",
             "zeroshot.txt", "zeroshot_all.txt", "README.txt"]
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    for split in ("train", "val", "test", "zeroshot"):
        for rel, _ in read_list(out / f"{split}.txt"):
            np.testing.assert_array_equal(decoded(tmp_path / "again", rel), decoded(out, rel), err_msg=rel)
    other = make_shapes_dataset(tmp_path / "other", seed=1, workers=1, progress=False,
                                **{**TINY, "zeroshot_classes": 0})
    rel = "train/red_square_moving_left/0000.mp4"
    assert not np.array_equal(decoded(tmp_path / "other", rel), decoded(out, rel))
    assert other["num_zeroshot_classes"] == 0 and not (tmp_path / "other" / "zeroshot.txt").exists()


# ---------------------------------------------------------------- command line


def test_cli_with_two_workers_writes_the_same_data_set(tiny, tmp_path):
    out, m = tiny
    res = CliRunner().invoke(make_dataset_cmd, ["shapes", str(tmp_path / "cli"), "--workers", "2", *TINY_ARGS])
    assert res.exit_code == 0, res.output
    assert "14 classes (12 training, 2 zero-shot)" in res.output
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text()) == m
    for split in ("train", "zeroshot"):
        assert (tmp_path / "cli" / f"{split}.txt").read_bytes() == (out / f"{split}.txt").read_bytes()
        for rel, _ in read_list(out / f"{split}.txt"):
            np.testing.assert_array_equal(decoded(tmp_path / "cli", rel), decoded(out, rel), err_msg=rel)


def test_cli_output_folder_rules(tmp_path):
    runner = CliRunner()
    args = ["shapes", str(tmp_path / "ds"), *TINY_ARGS, "--motions", "left,right", "--zeroshot-classes", "0",
            "--workers", "1"]
    assert runner.invoke(make_dataset_cmd, args).exit_code == 0
    res = runner.invoke(make_dataset_cmd, args)
    assert res.exit_code == 2 and "exists and is not empty; pass --overwrite" in res.output
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    res = runner.invoke(make_dataset_cmd, [*args, "--overwrite", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["seed"] == 3
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"  # not ours: left alone
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train").mkdir()
    res = runner.invoke(make_dataset_cmd, ["shapes", str(foreign), *TINY_ARGS, "--overwrite", "--workers", "1"])
    assert res.exit_code == 2 and "holds no data set written by make-dataset" in res.output
    assert (foreign / "train").is_dir()


@pytest.mark.parametrize("args, message", [
    (["kinetics", "OUT"], "unknown data set 'kinetics'; known: shapes"),
    (["shapes", "OUT", "--size", "30"], "--size 30"),
    (["shapes", "OUT", "--frames", "4"], "--frames 4"),
    (["shapes", "OUT", "--colours", "red,purple"], "unknown: purple"),
    (["shapes", "OUT", "--zeroshot-classes", "500"], "--zeroshot-classes 500"),
])
def test_cli_bad_input(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    res = CliRunner().invoke(make_dataset_cmd, args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not os.path.exists(tmp_path / "OUT")  # nothing written before the options are checked


def test_make_dataset_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="known: shapes"):
        make_dataset("ucf", tmp_path / "x")
