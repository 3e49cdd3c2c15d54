"""Labels files as people save them: byte-order marks, UTF-16, empty or binary files, repeated
and over-long labels, unreadable files. Each through the API and, where a user meets it, the CLI."""

import codecs
import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from video_factory import write_index_video

import xclip_engine as xe
from xclip_engine.engine import cli
from xclip_engine.engine.io import labels as labels_mod
from xclip_engine.engine.io.labels import LabelWarning, check_labels, load_labels, parse_labels

CSV = "id,name\n0,a red circle moving right\n1,a blue square\n"


def infer(*args):
    """`xclip-engine infer` in process; labels are read before any model or video is touched."""
    return CliRunner().invoke(cli.main, ["infer", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def tiny_folder(tiny_hf):
    return tiny_hf   # the session's tiny transformers folder (tests/conftest.py)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("v") / "v.mp4", 8)


# ---- encodings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
def test_bom_and_utf16_files_read_as_the_csv_they_are(tmp_path, encoding):
    f = tmp_path / "labels.csv"
    if encoding == "utf-16-le-bom":
        f.write_bytes(codecs.BOM_UTF16_LE + CSV.encode("utf-16-le"))
    elif encoding == "utf-16-be-bom":
        f.write_bytes(codecs.BOM_UTF16_BE + CSV.encode("utf-16-be"))
    else:
        f.write_bytes(CSV.encode(encoding))   # utf-8-sig, utf-16 and utf-32 write their BOM
    assert load_labels(str(f)) == ["a red circle moving right", "a blue square"]


def test_bom_one_label_per_line(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes(codecs.BOM_UTF8 + b"cooking\r\ndancing\r\n")
    assert load_labels(str(f)) == ["cooking", "dancing"]


@pytest.mark.parametrize("content, message", [
    (b"", "has no labels"),
    (b"\n  \n", "has no labels"),
    (codecs.BOM_UTF8, "has no labels"),
    (b"id,name\n", "only the 'id,name' header"),
    (codecs.BOM_UTF8 + b"id,name\r\n", "only the 'id,name' header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
    ("a\nb\n".encode("utf-16-le"), "not a text file"),   # UTF-16 without a BOM
])
def test_empty_header_only_and_binary_files_name_the_file(tmp_path, content, message):
    f = tmp_path / "my labels.csv"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        load_labels(str(f))
    assert str(f) in str(e.value)
    r = infer(tmp_path / "v.mp4", "--labels-file", f)
    assert r.exit_code == 2 and str(f) in r.stderr and message in r.stderr, r.output
    assert "Traceback" not in r.output and "codec can't decode" not in r.stderr


def test_binary_file_says_what_a_labels_file_is(tmp_path):
    f = tmp_path / "labels.bin"
    f.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"labels.bin: not a text file .*one label per line, or a CSV"):
        load_labels(str(f))


# ---- duplicates: merged, the first kept, one warning naming them -----------------------------------
def test_duplicates_in_a_file_are_merged_with_one_warning(tmp_path):
    f = tmp_path / "dups.txt"
    f.write_text("cooking\ndancing\nCooking\ndancing \nsurfing\ndancing\n")
    with pytest.warns(LabelWarning) as caught:
        labels = load_labels(str(f))
    assert labels == ["cooking", "dancing", "surfing"]
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert str(f) in msg and "'cooking' x2" in msg and "'dancing' x3" in msg and "3 labels remain" in msg


def test_duplicates_in_a_list_and_on_the_command_line():
    with pytest.warns(LabelWarning, match="'a' x2"):
        assert check_labels(["a", "b", "a"]) == ["a", "b"]
    with pytest.warns(LabelWarning, match="--labels: 1 label.*'a' x2"):
        assert parse_labels("a, b, a") == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_labels(["a", "b"]) == ["a", "b"]   # nothing to merge: quiet


def test_duplicate_labels_do_not_split_the_score(tiny_folder, video):
    model = xe.load(str(tiny_folder))
    one = model.classify([str(video)], ["cooking", "dancing"], topk=2)[0]
    with pytest.warns(LabelWarning):
        two = model.classify([str(video)], ["cooking", "dancing", "cooking"], topk=3)[0]
    assert [lab for lab, _ in two.top] == [lab for lab, _ in one.top]   # each label once
    assert sum(s for _, s in two.top) == pytest.approx(1.0, abs=1e-5)
    assert dict(two.top) == pytest.approx(dict(one.top), abs=1e-5)      # the same scores, not halved


def test_duplicates_through_the_cli(tiny_folder, video, tmp_path):
    f = tmp_path / "labels.csv"
    f.write_bytes(codecs.BOM_UTF8 + b"id,name\r\n0,cooking\r\n1,dancing\r\n2,cooking\r\n")
    r = infer(video, "--model", tiny_folder, "--labels-file", f, "--format", "jsonl", "--topk", "5",
              "--backend", "reference")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.splitlines()[0])
    assert sorted(t["label"] for t in row["top"]) == ["cooking", "dancing"]
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(said) == 1 and "'cooking' x2" in said[0] and str(f) in said[0], r.stderr
    assert "LabelWarning" not in r.stderr   # a plain line, not Python's file:line: Category: form


# ---- labels longer than the text tower reads ---------------------------------------------------
def test_long_label_is_reported_once_in_words(tiny_folder):
    model = xe.load(str(tiny_folder))
    long_label = " ".join(f"word{i}" for i in range(40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.encode_text(["short", long_label])
        model.encode_text([long_label, "other"])
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and caught[0].category is LabelWarning, said
    assert "label 'word0 word1" in said[0] and "tokens" in said[0] and "reads the first 77" in said[0]
    assert not [w for w in caught if w.category is UserWarning]   # no raw tokenizer warning


# ---- unreadable files: a permission problem is named as one ---------------------------------------
def _deny(monkeypatch, module):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    # tests run as root here, where chmod 000 still reads; the module's own `open` is what fails
    monkeypatch.setattr(module, "open", denied, raising=False)


def test_unreadable_labels_file_says_permission_denied(tmp_path, monkeypatch):
    f = tmp_path / "labels.txt"
    f.write_text("a\nb\n")
    _deny(monkeypatch, labels_mod)
    with pytest.raises(ValueError, match="permission denied.*check the file's permissions") as e:
        load_labels(str(f))
    assert str(f) in str(e.value) and "again" not in str(e.value)
    r = infer(tmp_path / "v.mp4", "--labels-file", f)
    assert r.exit_code == 2 and str(f) in r.stderr and "permission denied" in r.stderr, r.output


def test_merging_leaves_the_callers_list_alone():
    given = ["a", "a"]
    with pytest.warns(LabelWarning):
        check_labels(given)
    assert given == ["a", "a"]


def test_tensor_calls_keep_one_row_per_label_asked_for(tiny_folder):
    """encode_text is a tensor call: its rows line up with the labels given, repeats included."""
    import xclip_engine as xe

    m = xe.load(tiny_folder, device="cpu")
    t = m.encode_text(["cooking", "dancing", "cooking"])
    assert t.shape[0] == 3 and torch.allclose(t[0], t[2], atol=1e-6)
