"""EVL through the API, xe.infer and the CLI: a closed-set model, its own preprocessing and views."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine.cli import main
from xclip_engine.engine.io.labels import ClosedSetError, load_labels

from .factory import random_official, write_official_pth, write_torchscript

NAMES = ["abseiling", "bowling", "cooking", "dancing", "eating"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def evl(tmp_path_factory):
    d = tmp_path_factory.mktemp("evl-api")
    videos = d / "videos"
    videos.mkdir()
    write_index_video(videos / "a.mp4", 40, size=(64, 48))
    write_index_video(videos / "b.webm", 12, codec="vp9", size=(48, 64))
    (videos / "c_broken.mp4").write_text("not a video")
    m = xe.load("evl-tiny-test", random_init=True)
    xe.save_model(m.net, str(d / "ours"), labels=NAMES)
    xe.save_model(m.net, str(d / "nameless"))
    visual, decoder = random_official(width=64, layers=2, patch=8, grid=4, frames=4, decoder_layers=2, classes=5)
    write_official_pth(d / "evl.pth", decoder)
    write_torchscript(d / "clip-a.pt", visual, width=64, layers=2, patch=8, grid=4)
    torch.save(visual, d / "clip-b.pt")
    (d / "names.txt").write_text("\n".join(NAMES) + "\n")
    (d / "three.txt").write_text("x\ny\nz\n")
    return d


def test_closed_set_model_api(evl):
    m = xe.load(evl / "ours")
    assert m.family == "evl" and m.closed_set and m.num_classes == 5 and m.labels == NAMES
    x = torch.randn(2, 4, 3, 32, 32)
    logits = m.logits(x)
    assert logits.shape == (2, 5)
    assert m.encode_video(x).shape == (2, 32)                    # the query token, before the head
    with torch.inference_mode():
        torch.testing.assert_close(m.net.logits_from_features(m.encode_video(x)), logits)
    with pytest.raises(ClosedSetError, match="closed-set classifier of 5 classes"):
        m.logits(x, ["cooking", "dancing"])
    with pytest.raises(ClosedSetError, match="closed-set"):
        m.encode_text(["cooking"])
    assert "family=evl" in repr(m) and "classes=5" in repr(m)
    pre = m.preprocessing
    assert (pre["family"], pre["sampling"], pre["stride"], pre["views"], pre["input_range"]) == \
        ("evl", "stride", 2, "3x1", "0..1")
    assert xe.load("xclip-tiny-test", random_init=True).preprocessing["sampling"] == "tsn-center"


def test_official_release_shape_is_named_by_k400(tmp_path):
    visual, decoder = random_official(width=64, layers=1, patch=8, grid=4, frames=4, decoder_layers=1, classes=400)
    torch.save(visual, tmp_path / "clip.pt")
    m = xe.load(write_official_pth(tmp_path / "k400.pth", decoder), backbone=tmp_path / "clip.pt")
    k400 = load_labels("k400")
    assert m.labels == k400 and len(k400) == 400
    # the standard Kinetics-400 order (the official EVL release's class indices, data/k400_class_mappings.json)
    assert (k400[0], k400[1], k400[2], k400[399]) == ("abseiling", "air drumming", "answering questions", "zumba")
    xe.save_model(m, str(tmp_path / "ours"))                       # one model of ours: backbone and names kept
    back = xe.load(tmp_path / "ours")
    assert back.labels == k400 and back.backbone_origin is None
    x = torch.randn(1, 4, 3, 32, 32)
    assert torch.equal(back.logits(x), m.logits(x))


def test_classify_scores_are_the_mean_softmax_of_the_views(evl):
    from xclip_engine.engine.video.decoders import read_clip

    m = xe.load(evl / "ours")
    path = str(evl / "videos" / "a.mp4")
    [pred] = m.classify([path], topk=5)
    clip = read_clip(path, preprocessing=m.preprocessing)          # the model's own: 3 temporal views
    assert clip.shape == (3, 4, 3, 32, 32)
    want = m.logits(clip).softmax(-1).mean(0)
    got = dict(pred.top)
    for i, name in enumerate(NAMES):
        assert got[name] == pytest.approx(float(want[i]), abs=1e-6)
    [one] = m.classify([path], topk=5, views="1x1")               # an explicit views argument overrides
    one_clip = read_clip(path, preprocessing=m.preprocessing, views="1x1")
    assert dict(one.top)["cooking"] == pytest.approx(float(m.logits(one_clip).softmax(-1)[0, 2]), abs=1e-6)


def test_labels_of_a_closed_set_model(evl):
    nameless = xe.load(evl / "nameless")
    path = [str(evl / "videos" / "a.mp4")]
    with pytest.raises(ClosedSetError, match="5 classes and no class names"):
        nameless.classify(path)
    [p] = nameless.classify(path, labels=NAMES, topk=2)
    assert {lab for lab, _ in p.top} <= set(NAMES)
    with pytest.raises(ClosedSetError, match="cannot score free-text labels"):
        nameless.classify(path, labels=["x", "y", "z"])


def test_infer_rows_and_default_views(evl, tmp_path):
    out = tmp_path / "out.jsonl"
    rows = list(xe.infer(evl / "videos", model=evl / "ours", output=out))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a.mp4", "b.webm", "c_broken.mp4"]
    for r in rows:
        assert set(r) == {"path", "top", "error"}
    assert rows[2]["error"] and rows[2]["top"] == []
    assert [t["label"] for t in rows[0]["top"]] and rows[0]["error"] is None
    assert abs(sum(t["score"] for t in rows[0]["top"]) - 1) < 1e-4
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["views"] == "3x1"


def test_timeline_windows_of_an_evl_model(evl):
    [row] = xe.infer([evl / "videos" / "a.mp4"], model=evl / "ours", window=0.5)
    assert row["error"] is None and row["windows"]
    assert len(row["windows"][0]["scores"]) == 5 and abs(sum(row["windows"][0]["scores"]) - 1) < 1e-4


def test_cli_infer_our_format_and_labels(evl):
    r = run("infer", evl / "videos", "--model", evl / "ours", "--format", "json", "--topk", "2")
    assert r.exit_code == 1, r.output                              # the broken file fails, the others answer
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(set(row) == {"path", "top", "error"} for row in rows)
    assert {t["label"] for t in rows[0]["top"]} <= set(NAMES)
    r = run("infer", evl / "videos" / "a.mp4", "--model", evl / "ours", "--labels", "cooking, dancing")
    assert r.exit_code == 2 and "closed-set classifier of 5 classes" in r.stderr and "--labels-file" in r.stderr
    r = run("infer", evl / "videos" / "a.mp4", "--model", evl / "nameless", "--labels-file", evl / "names.txt",
            "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top"][0]["label"] in NAMES
    r = run("infer", evl / "videos" / "a.mp4", "--model", evl / "nameless", "--labels-file", evl / "three.txt")
    assert r.exit_code == 2 and "5 classes" in r.stderr and "the 3 labels given" in r.stderr
    r = run("infer", evl / "videos" / "a.mp4", "--model", evl / "nameless")
    assert r.exit_code == 2 and "--labels-file" in r.stderr


def test_cli_two_file_official_layout_and_resume_identity(evl, tmp_path):
    out = tmp_path / "res.jsonl"
    files = [evl / "videos" / "a.mp4", evl / "videos" / "b.webm"]
    r = run("infer", *files, "--model", evl / "evl.pth", "--backbone", evl / "clip-a.pt",
            "--labels-file", evl / "names.txt", "--format", "jsonl", "--output", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(row["error"] is None and len(row["top"]) == 5 for row in rows)
    meta = json.loads((tmp_path / "res.jsonl.meta.json").read_text())
    assert meta["model"]["backbone"].endswith("clip-a.pt") and meta["model"]["kind"] == "official"
    # the same weights from another file are another backbone as far as a resumed run can tell
    r = run("infer", *files, "--model", evl / "evl.pth", "--backbone", evl / "clip-b.pt",
            "--labels-file", evl / "names.txt", "--format", "jsonl", "--output", out, "--resume")
    assert r.exit_code == 2 and "written by another run" in r.stderr and "clip-a.pt" in r.stderr
    r = run("infer", *files, "--model", evl / "evl.pth", "--backbone", evl / "clip-a.pt",
            "--labels-file", evl / "names.txt", "--format", "jsonl", "--output", out, "--resume")
    assert r.exit_code == 0, r.output
    r = run("infer", files[0], "--model", evl / "evl.pth", "--labels-file", evl / "names.txt")
    assert r.exit_code == 2 and "pass its CLIP backbone" in r.stderr


def test_cli_backbone_with_xclip_and_models_listing(evl, tiny_hf):
    r = run("infer", evl / "videos" / "a.mp4", "--model", tiny_hf, "--backbone", evl / "clip-a.pt",
            "--labels", "a, b")
    assert r.exit_code == 2 and "is not used" in r.stderr
    r = run("models")
    lines = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert lines["evl-b16-8f"] == "evl" and lines["xclip-base-patch32"] == "xclip"


def test_pixel_input_checks(evl):
    m = xe.load(evl / "ours")
    with pytest.raises(ValueError, match=r"this model takes \[B, 4, 3, 32, 32\]"):
        m.logits(np.zeros((1, 8, 3, 32, 32), np.float32))


def test_doctor_on_the_two_file_layout(evl):
    r = run("doctor", "--model", evl / "evl.pth", "--backbone", evl / "clip-b.pt", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert "evl" in json.dumps(report).lower()
    r = run("doctor", "--model", evl / "evl.pth")
    assert r.exit_code == 2 and "pass its CLIP backbone" in r.stderr


def test_eval_of_the_two_file_layout_uses_its_own_views(evl, tmp_path):
    (tmp_path / "test.txt").write_text(f"{evl / 'videos' / 'a.mp4'} 0\n{evl / 'videos' / 'b.webm'} 3\n")
    (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(NAMES)))
    r = run("eval", evl / "evl.pth", "--backbone", evl / "clip-b.pt", "--list", tmp_path / "test.txt",
            "--labels", tmp_path / "labels.csv", "--json", tmp_path / "res.json")
    assert r.exit_code == 0, r.output
    assert "on 2 videos (3x1 views)" in r.stdout
    assert json.loads((tmp_path / "res.json").read_text())["n"] == 2
