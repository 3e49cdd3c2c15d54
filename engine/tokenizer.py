"""CLIP's byte-level BPE tokenizer, turning class names into the text tower's input ids.

The algorithm is the one OpenAI released with CLIP (github.com/openai/CLIP, clip/simple_tokenizer.py;
X-CLIP ships the same file), which follows GPT-2's byte-level BPE (Radford et al. 2019,
github.com/openai/gpt-2, src/encoder.py) with an end-of-word marker `</w>` in place of GPT-2's
leading-space marker. The released X-CLIP weights were trained on ids made this way, so wherever
another implementation disagrees (transformers' CLIPTokenizer does not unescape HTML entities nor run
ftfy), this module sides with CLIP.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import warnings
from collections.abc import Iterable
from functools import lru_cache
from itertools import pairwise

import ftfy
import regex
import torch

from .io.labels import LabelWarning

BUNDLED_MERGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"
# CLIP's vocabulary holds 49,408 ids: 256 byte symbols, the same with `</w>`, the merges, then SOT and
# EOT. The bundled file lists far more merges than that; CLIP reads only as many as fit.
CLIP_VOCAB_SIZE = 49408
_N_BUNDLED_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

# CLIP's split: the two special tokens whole, English contractions, runs of letters, single digits
# (so numbers never become one opaque token), and runs of anything else that is not a space.
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_SPACES = regex.compile(r"\s+")


def _byte_symbols() -> dict[int, str]:
    """Give each of the 256 byte values a printable character, so BPE never sees spaces or controls.

    Printable Latin-1 bytes stand for themselves; the other bytes take code points from 256 upwards,
    in byte order. The exact assignment is part of the vocabulary, so it must match CLIP's.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table  # insertion order (kept bytes, then the rest) is the id order of the base vocabulary


def clean(text: str) -> str:
    """Normalise text as CLIP did in training: repair mojibake, unescape HTML (twice, for `&amp;amp;`),
    collapse whitespace and lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


class ClipTokenizer:
    """Byte-level BPE over CLIP's vocabulary; call it on class names to get `[K, context_length]` ids."""

    def __init__(self, vocab_json: str | os.PathLike | None = None, merges_txt: str | os.PathLike | None = None):
        if (vocab_json is None) != (merges_txt is None):
            raise ValueError("give both vocab_json and merges_txt (a transformers-style pair), or neither "
                             "to use the bundled CLIP vocabulary")
        self._byte_to_sym = _byte_symbols()
        self._sym_to_byte = {s: b for b, s in self._byte_to_sym.items()}
        if vocab_json is None:
            with gzip.open(BUNDLED_MERGES, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")[1:_N_BUNDLED_MERGES + 1]  # line 0 is a version header
            merges = [tuple(line.split()) for line in lines]
            # The id order is fixed by construction: bytes, bytes + `</w>`, merge results, specials.
            symbols = list(self._byte_to_sym.values())
            tokens = symbols + [s + EOW for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
            self.encoder = {tok: i for i, tok in enumerate(tokens)}
        else:
            with open(vocab_json, encoding="utf-8") as f:
                self.encoder = {str(k): int(v) for k, v in json.load(f).items()}
            with open(merges_txt, encoding="utf-8") as f:
                lines = [ln for ln in f.read().split("\n") if ln.strip() and not ln.startswith("#version")]
            merges = [tuple(line.split()) for line in lines]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"malformed merge line(s), expected 'a b': {bad[:3]}")
        self.merges: list[tuple[str, str]] = merges
        self._rank = {m: r for r, m in enumerate(merges)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        missing = [t for t in (SOT, EOT) if t not in self.encoder]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {missing}")
        self.sot_token_id: int = self.encoder[SOT]
        self.eot_token_id: int = self.encoder[EOT]
        self.vocab_size: int = max(self.decoder) + 1  # ids, not entries: an embedding needs this many rows
        # Per-instance memo: label sets repeat the same words ("playing", "guitar") over and over, and
        # BPE on a word is the costly step. Bounded so that free text in a server cannot grow it forever.
        self._bpe = lru_cache(maxsize=1 << 16)(self._bpe_word)
        self._warned_long: set[str] = set()   # labels already reported as too long (reported once)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """The folder's own `vocab.json` + `merges.txt` when both are there (a model that ships its
        vocabulary), otherwise the bundled CLIP vocabulary."""
        vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        if os.path.isfile(vocab) and os.path.isfile(merges):
            return cls(vocab_json=vocab, merges_txt=merges)
        return cls()

    def _bpe_word(self, word: str) -> tuple[str, ...]:
        """Merge one pre-split word (already in byte symbols) into vocabulary tokens."""
        if word in (SOT, EOT):  # the special tokens are atoms, never split into bytes
            return (word,)
        parts = [*word[:-1], word[-1] + EOW]  # the last symbol carries the end-of-word mark
        while len(parts) > 1:
            # Apply the lowest-ranked (earliest learned) merge present anywhere in the word, at every
            # non-overlapping place it occurs, left to right; repeat until no known pair is left.
            pairs = set(pairwise(parts))
            best = min(pairs, key=lambda p: self._rank.get(p, float("inf")))
            if best not in self._rank:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without SOT/EOT."""
        ids: list[int] = []
        for piece in _SPLIT.findall(clean(text)):
            if piece not in (SOT, EOT):
                piece = "".join(self._byte_to_sym[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[tok] for tok in self._bpe(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, words separated by single spaces (CLIP's cleaning is lossy: case, spacing)."""
        buf = bytearray()
        for i in ids:
            tok = self.decoder.get(int(i))
            if tok is None:
                raise ValueError(f"id {int(i)} is outside the vocabulary (size {self.vocab_size})")
            word_end = tok.endswith(EOW)
            # Work in bytes until the end: one character may be spread over several tokens. The special
            # tokens are plain printable ASCII, so the byte table spells them out too.
            buf.extend(self._sym_to_byte[c] for c in (tok[: -len(EOW)] if word_end else tok))
            if word_end:
                buf.append(ord(" "))
        return buf.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Iterable[str], context_length: int = 77) -> torch.Tensor:
        """`[K, context_length]` int64 ids: SOT, the label's ids, EOT, then zeros (CLIP pads with 0;
        the text tower reads the feature at the EOT position, which is each row's argmax)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("no labels given: pass a non-empty list of class names "
                             "(e.g. the 'name' column of a labels CSV)")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (room for SOT and EOT), got {context_length}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"label at index {i} is {type(t).__name__}, not str: {t!r:.60}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                # CLIP's own tokenize(truncate=True) does the same: keep the head, end on EOT so the
                # text tower still finds the sentence end. Said once per label and tokenizer, in words,
                # since the tail of the name is lost and the user may want to shorten it.
                n_tokens = len(ids)
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
                if text not in self._warned_long:
                    self._warned_long.add(text)
                    self._warn_long(text, n_tokens, ids, context_length)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _warn_long(self, text: str, n_tokens: int, kept: list[int], context_length: int) -> None:
        short = text if len(text) <= 40 else text[:37] + "..."
        seen = self.decode(kept[1:-1])
        tail = seen if len(seen) <= 40 else "..." + seen[-37:]
        warnings.warn(f"label {short!r} is {n_tokens} tokens (with the start and end marks); the model reads the "
                      f"first {context_length}, up to {tail!r}, and ignores the rest: shorten the label to keep "
                      "all of it", LabelWarning, stacklevel=3)

    def save_vocabulary(self, folder: str | os.PathLike) -> tuple[str, str]:
        """Write `vocab.json` and `merges.txt` in transformers' layout; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        with open(vocab, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(self.encoder.items(), key=lambda kv: kv[1])), f, ensure_ascii=False)
        with open(merges, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{a} {b}\n" for a, b in self.merges)
        return vocab, merges
