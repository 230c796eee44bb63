"""Data for the tagging head (many-to-many, Tx = Ty): one tag per token (``ner``, ``tagging``).

User files are CoNLL-style columns (:func:`toolkit.data.readers.read_conll`).
"""

from __future__ import annotations

import torch

from toolkit.data import readers
from toolkit.data.base import SplitDataModule, pad
from toolkit.data.text import Vocab, normalize, shape

MAX_WORD_CHARS = 20  # longer tokens (URLs) keep their first 20 characters for the char CNN


def encode_tagging(tokens: list[str], vocab: Vocab, norm: str, chars: Vocab) -> dict:
    return {"tokens": vocab.encode(normalize(t, norm) for t in tokens),
            "shapes": [shape(t) for t in tokens],
            "chars": [chars.encode(t[:MAX_WORD_CHARS]) for t in tokens]}


def pad_chars(words: list[list[list[int]]]) -> torch.Tensor:
    """Per-sentence lists of per-token char ids -> (B, T, W), zero-padded."""
    t = max(len(w) for w in words)
    width = max(len(c) for w in words for c in w)
    out = torch.zeros(len(words), t, width, dtype=torch.long)
    for b, sent in enumerate(words):
        for i, c in enumerate(sent):
            out[b, i, : len(c)] = torch.tensor(c, dtype=torch.long)
    return out


def collate_tagging(items: list[dict]) -> dict:
    batch = {
        "tokens": pad([it["tokens"] for it in items], 0),
        "shapes": pad([it["shapes"] for it in items], 0),
        "chars": pad_chars([it["chars"] for it in items]),
        "lengths": torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long),
    }
    if "tags" in items[0]:
        batch["tags"] = pad([it["tags"] for it in items], -100)
    return batch


class TaggingDataModule(SplitDataModule):
    """Token sequences with one tag per token (``ner``, ``tagging``)."""

    kind = "tagging"
    read = staticmethod(readers.read_conll)
    collate = staticmethod(collate_tagging)

    def __init__(self, *, token_col: int = 0, tag_col: int = -1, sep: str | None = None,
                 scheme: str | None = "bio", tokenizer: str = "tweet", normalize: str = "twitter", **kw):
        super().__init__(tokenizer=tokenizer, normalize=normalize, **kw)
        self.chars: Vocab | None = None  # built from the training tokens alongside the vocabulary
        if self.source is None:
            self.reader_options = {"token_col": token_col, "tag_col": tag_col, "sep": sep, "scheme": scheme}

    def spec(self) -> dict:
        return {**super().spec(), "chars": self.chars.itos}

    def _train_tokens(self, train):
        tokens = [t for toks in train["tokens"] for t in toks]
        self.chars = Vocab.build(c for t in tokens for c in t[:MAX_WORD_CHARS])
        return (normalize(t, self.norm) for t in tokens)

    def _train_labels(self, train):
        return {t for tags in train["tags"] for t in tags}

    def _encode_split(self, data, split):
        out = []
        for ex in data:
            item = encode_tagging(ex["tokens"], self.vocab, self.norm, self.chars)
            try:
                item["tags"] = [self.labels.index[t] for t in ex["tags"]]
            except KeyError as e:
                raise self._unseen(e.args[0], split) from None
            out.append(item)
        return out


