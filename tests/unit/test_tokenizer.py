"""ClipTokenizer: row layout, truncation, input errors, vocabulary loading and round trips."""

import json
import random
import warnings

import pytest
import torch

from xclip_engine.engine.io.labels import LabelWarning
from xclip_engine.engine.tokenizer import ClipTokenizer

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def test_special_ids_and_size(tok):
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (SOT, EOT, 49408)


def test_rows_sot_eot_zero_padding(tok):
    labels = ["abseiling", "playing guitar", "ApplyEyeMakeup", ""]
    ids = tok(labels)
    assert ids.shape == (4, 77) and ids.dtype == torch.long
    assert (ids[:, 0] == SOT).all()
    for row, label in zip(ids, labels):
        n = len(tok.encode(label))
        assert row[1:n + 1].tolist() == tok.encode(label)
        assert row[n + 1] == EOT
        assert int(row.argmax()) == n + 1  # the text tower reads the EOT feature at the argmax
        assert not row[n + 2:].any()
    assert ids[3, :2].tolist() == [SOT, EOT]


def test_single_string_and_context_length(tok):
    assert tok("cartwheel").shape == (1, 77)
    assert torch.equal(tok("cartwheel", context_length=16), tok(["cartwheel"])[:, :16])
    with pytest.raises(ValueError, match="context_length"):
        tok("x", context_length=1)


def test_truncation_warns_and_keeps_eot(tok):
    assert tok.encode("a a a") == [tok.encode("a")[0]] * 3  # one token per "a"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(" ".join(["a"] * 75))  # SOT + 75 + EOT = 77: fits exactly, no warning
    long_label = " ".join(["a"] * 76)
    said = r"label 'a a a .*\.\.\.' is 78 tokens .* reads the first 77, up to '\.\.\.a a a"
    with pytest.warns(LabelWarning, match=said):
        ids = tok(["b", long_label])
    with warnings.catch_warnings():   # said once per label: the same label again is quiet
        warnings.simplefilter("error")
        tok([long_label])
    row = ids[1]
    assert row[0] == SOT and row[-1] == EOT and int(row.argmax()) == 76
    assert row[1:76].tolist() == tok.encode(long_label)[:75]


def test_empty_list_is_an_error(tok):
    with pytest.raises(ValueError, match="no labels given.*non-empty list"):
        tok([])


def test_non_string_names_the_index(tok):
    with pytest.raises(TypeError, match="index 1 is int"):
        tok(["run", 3, "jump"])
    with pytest.raises(TypeError, match="index 0 is bytes"):
        tok([b"run"])


def test_cleaning(tok):
    assert tok.encode("  Playing\t\nGUITAR  ") == tok.encode("playing guitar")
    assert tok.encode("rock &amp; roll") == tok.encode("rock & roll")
    assert tok.encode("") == [] and tok.encode(" \n ") == []


def test_decode_round_trip_lower_ascii(tok):
    rng = random.Random(0)
    for _ in range(200):
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))
                 for _ in range(rng.randint(1, 8))]
        text = " ".join(words)
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode("ice skating"))) == "ice skating"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49408])


def small_vocabulary(folder, tok, n_merges=1000):
    """A folder holding a cut-down vocabulary (bytes + first merges + specials), in transformers' format."""
    tok.save_vocabulary(folder)
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:n_merges + 1]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    keep = sorted(vocab.items(), key=lambda kv: kv[1])[:512 + n_merges]
    small = {t: i for i, (t, _) in enumerate(keep)}
    small.update({"<|startoftext|>": len(small), "<|endoftext|>": len(small) + 1})
    (folder / "vocab.json").write_text(json.dumps(small), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def test_from_folder_uses_own_vocabulary(tmp_path, tok):
    small_vocabulary(tmp_path, tok)
    own = ClipTokenizer.from_folder(tmp_path)
    assert (own.vocab_size, own.sot_token_id, own.eot_token_id) == (1514, 1512, 1513)
    word = "kinesiology"
    assert len(own.encode(word)) > len(tok.encode(word))  # fewer merges, more pieces
    assert own.decode(own.encode(word)) == word
    ids = own([word])
    assert ids[0, 0] == 1512 and int(ids[0].argmax()) == len(own.encode(word)) + 1


def test_from_folder_falls_back_to_bundled(tmp_path, tok):
    assert ClipTokenizer.from_folder(tmp_path).vocab_size == 49408  # empty folder
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")  # half a pair is not a vocabulary
    fallback = ClipTokenizer.from_folder(tmp_path)
    assert fallback.vocab_size == 49408 and fallback.encode("yo-yo") == tok.encode("yo-yo")


def test_saved_vocabulary_round_trips(tmp_path, tok):
    vocab, merges = tok.save_vocabulary(tmp_path)
    with open(merges, encoding="utf-8") as f:
        assert f.readline() == "#version: 0.2\n"
    again = ClipTokenizer(vocab_json=vocab, merges_txt=merges)
    labels = ["abseiling", "Playing Ukulele", "Привет мир 🎉", "日本語 123"]
    assert again.vocab_size == tok.vocab_size and torch.equal(again(labels), tok(labels))
    with pytest.raises(ValueError, match="both"):
        ClipTokenizer(vocab_json=vocab)
