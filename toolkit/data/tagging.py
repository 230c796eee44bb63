"""Data for the tagging head (many-to-many, Tx = Ty): one tag per token (``ner``, ``tagging``).

User files are CoNLL-style columns (:func:`toolkit.data.readers.read_conll`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from toolkit.data import readers
from toolkit.data.base import SplitDataModule, pad
from toolkit.data.sources import GAZETTEERS, read_gazetteer
from toolkit.data.text import Vocab, normalize, shape
from toolkit.errors import ConfigError

MAX_WORD_CHARS = 20  # longer tokens (URLs) keep their first 20 characters for the char CNN


def gazetteer_features(tokens: list[str], gazetteer: dict) -> list[list[float]]:
    """``data.gazetteer``: for each token, 2 x len(types) flags: column 2k is 1 where a phrase of
    type k starts at the token, column 2k + 1 where one continues through it. Every listed phrase
    that the lower-cased tokens spell out counts, overlapping ones too."""
    words = [t.lower() for t in tokens]
    out = [[0.0] * (2 * len(gazetteer["types"])) for _ in words]
    phrases = gazetteer["phrases"]
    for i in range(len(words)):
        for n in range(1, min(gazetteer["longest"], len(words) - i) + 1):
            for k in phrases.get(" ".join(words[i:i + n]), ()):
                out[i][2 * k] = 1.0
                for j in range(i + 1, i + n):
                    out[j][2 * k + 1] = 1.0
    return out


def encode_tagging(tokens: list[str], vocab: Vocab, norm: str, chars: Vocab, gazetteer: dict | None = None) -> dict:
    """Tokens -> {"tokens", "shapes", "chars"} ids, and {"gazetteer": flags} for a tagger trained
    with ``data.gazetteer`` (``gazetteer_features``)."""
    item = {"tokens": vocab.encode(normalize(t, norm) for t in tokens),
            "shapes": [shape(t) for t in tokens],
            "chars": [chars.encode(t[:MAX_WORD_CHARS]) for t in tokens]}
    if gazetteer is not None:
        item["gazetteer"] = gazetteer_features(tokens, gazetteer)
    return item


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
    if "gazetteer" in items[0]:  # (B, T, 2 x types), zeros at padding
        rows = [it["gazetteer"] for it in items]
        width, t = len(rows[0][0]), batch["tokens"].size(1)
        batch["gazetteer"] = torch.tensor([r + [[0.0] * width] * (t - len(r)) for r in rows], dtype=torch.float32)
    if "tags" in items[0]:
        batch["tags"] = pad([it["tags"] for it in items], -100)
    return batch


class TaggingDataModule(SplitDataModule):
    """Token sequences with one tag per token (``ner``, ``tagging``)."""

    kind = "tagging"
    read = staticmethod(readers.read_conll)
    collate = staticmethod(collate_tagging)

    def __init__(self, *, token_col: int = 0, tag_col: int = -1, sep: str | None = None,
                 scheme: str | None = "bio", tokenizer: str = "tweet", normalize: str = "twitter",
                 gazetteer: str | list[str] | None = None, **kw):
        super().__init__(tokenizer=tokenizer, normalize=normalize, **kw)
        self.chars: Vocab | None = None  # built from the training tokens alongside the vocabulary
        if self.source is None:
            self.reader_options = {"token_col": token_col, "tag_col": tag_col, "sep": sep, "scheme": scheme}
        names = [gazetteer] if isinstance(gazetteer, str) else gazetteer
        if names is not None and (isinstance(names, (bytes, Mapping)) or not hasattr(names, "__iter__")
                                  or not (names := list(names))
                                  or not all(isinstance(n, str) and n for n in names)):
            raise ConfigError(f"data.gazetteer={gazetteer!r} must be a list of gazetteers' names "
                              f"({', '.join(GAZETTEERS)}) or paths of phrase<TAB>type files, or null")
        self.gazetteer_names = names
        self.gazetteer: dict | None = None  # read in setup, kept in the checkpoint's spec

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is None and self.gazetteer_names is not None:
            self.gazetteer = read_gazetteer(self.gazetteer_names)  # before the splits are encoded with it
        super().setup(stage)

    def spec(self) -> dict:
        out = {**super().spec(), "chars": self.chars.itos}
        if self.gazetteer is not None:
            out["gazetteer"] = self.gazetteer
        return out

    def _train_tokens(self, train):
        tokens = [t for toks in train["tokens"] for t in toks]
        self.chars = Vocab.build(c for t in tokens for c in t[:MAX_WORD_CHARS])
        return (normalize(t, self.norm) for t in tokens)

    def _train_labels(self, train):
        return {t for tags in train["tags"] for t in tags}

    def _encode_split(self, data, split):
        out = []
        for ex in data:
            item = encode_tagging(ex["tokens"], self.vocab, self.norm, self.chars, self.gazetteer)
            try:
                item["tags"] = [self.labels.index[t] for t in ex["tags"]]
            except KeyError as e:
                raise self._unseen(e.args[0], split) from None
            out.append(item)
        return out


