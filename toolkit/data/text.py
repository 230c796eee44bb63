"""Tokenizers, token normalisation and vocabularies.

Everything here is plain data (lists and strings) so it can be stored in a
checkpoint and rebuilt there without the data module (``rtk predict``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from toolkit.errors import ConfigError

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
PAD_ID, UNK_ID = 0, 1  # every Vocab starts with <pad>, <unk>

_TWEET = re.compile(r"https?://\S+|www\.\S+|[@#]\w+|\w+(?:[-'’]\w+)*|'\w+|[^\w\s]+")
_WORDS = re.compile(r"\w+(?:['’]\w+)?|[^\w\s]")  # \w is Unicode: café, naïve stay whole


def tokenize(text: str, kind: str) -> list[str]:
    """Split raw text the way the task's training data was split."""
    if kind == "tweet":  # keeps @mentions, #hashtags and URLs whole, splits punctuation off
        return _TWEET.findall(text)
    if kind == "words":  # lower-cased words and punctuation
        return _WORDS.findall(text.lower())
    if kind == "chars":  # every character but white space (names, peptides)
        return [c for c in text if not c.isspace()]
    if kind == "chars_with_spaces":  # every character; runs of white space become one space
        return list(" ".join(text.split()))
    if kind == "whitespace":
        return text.split()
    raise ConfigError(f"data.tokenizer={kind!r} is not one of: tweet, words, chars, chars_with_spaces, "
                      "whitespace")


TOKENIZERS = ("tweet", "words", "chars", "chars_with_spaces", "whitespace")


def normalize(token: str, kind: str) -> str:
    """The key a token is looked up by in the vocabulary."""
    if kind == "none":
        return token
    if kind == "lower":
        return token.lower()
    if kind == "twitter":  # case goes to the shape feature; rare forms collapse to classes
        if token.startswith("@") and len(token) > 1:
            return "<user>"
        if token.startswith(("http://", "https://", "www.")):
            return "<url>"
        return re.sub(r"\d", "0", token.lower())
    raise ConfigError(f"data.normalize={kind!r} is not one of: none, lower, twitter")


NORMALIZERS = ("none", "lower", "twitter")

SHAPES = ("<pad>", "lower", "title", "upper", "mixed", "digit", "punct", "mention", "hashtag", "url", "other")
_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def shape(token: str) -> int:
    """A small id for a token's written form: capitalisation carries much of NER."""
    if token.startswith("@") and len(token) > 1:
        s = "mention"
    elif token.startswith("#") and len(token) > 1:
        s = "hashtag"
    elif token.startswith(("http://", "https://", "www.")):
        s = "url"
    elif token.isdigit():
        s = "digit"
    elif not any(c.isalnum() for c in token):
        s = "punct"
    elif token.islower():
        s = "lower"
    elif token.isupper():
        s = "upper"
    elif token[:1].isupper() and token[1:].islower():
        s = "title"
    elif any(c.isalpha() for c in token):
        s = "mixed"
    else:
        s = "other"
    return _SHAPE_ID[s]


class Vocab:
    """Index <-> token, with ``<pad>`` = 0 and ``<unk>`` = 1."""

    def __init__(self, itos: list[str]):
        if itos[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, tokens: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "Vocab":
        """Tokens seen at least ``min_count`` times, most frequent first (ties by first sight)."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"data.min_count={min_count} must be at least 1")
        counts = Counter(tokens)
        kept = [t for t, n in counts.most_common() if n >= min_count and t not in (PAD, UNK)]
        if max_size is not None:
            kept = kept[:max_size]
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]


class Labels:
    """The label set seen in training, sorted, so ids are stable across runs."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)
