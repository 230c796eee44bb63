"""Data for the classification head (many-to-one): a sequence and one label
(``sentiment``, ``peptides``, ``classification``).

User files are CSV / JSONL tables (:func:`toolkit.data.readers.read_table`).
"""

from __future__ import annotations

import torch

from toolkit.data import readers
from toolkit.data.base import SplitDataModule, pad
from toolkit.data.sources import LEXICONS, read_lexicon
from toolkit.data.text import Vocab, normalize, tokenize
from toolkit.errors import ConfigError, DataError


def lexicon_scores(tokens: list[str], lexicon: dict[str, float]) -> list[float]:
    """Each token's ``data.lexicon`` score, looked up lower-cased before normalisation; 0 when unlisted."""
    return [lexicon.get(t.lower(), 0.0) for t in tokens]


def encode_text(text: str, vocab: Vocab, tokenizer: str, norm: str, lexicon: dict[str, float] | None = None) -> dict:
    """A text -> {"tokens": ids}, plus {"lexicon": each token's score} for a model trained with
    ``data.lexicon``."""
    toks = tokenize(text, tokenizer)
    item = {"tokens": vocab.encode(normalize(t, norm) for t in toks)}
    if lexicon is not None:
        item["lexicon"] = lexicon_scores(toks, lexicon)
    return item


def collate_classification(items: list[dict]) -> dict:
    batch = {
        "tokens": pad([it["tokens"] for it in items], 0),
        "lengths": torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long),
    }
    if "lexicon" in items[0]:
        width = batch["tokens"].size(1)
        batch["lexicon"] = torch.tensor([it["lexicon"] + [0.0] * (width - len(it["lexicon"])) for it in items],
                                        dtype=torch.float32)
    if "label" in items[0]:
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


class ClassificationDataModule(SplitDataModule):
    """A sequence and one label (``sentiment``, ``peptides``, ``classification``)."""

    kind = "classification"
    read = staticmethod(readers.read_table)
    collate = staticmethod(collate_classification)

    def __init__(self, *, text_col: str = "text", label_col: str = "label", lexicon: str | None = None, **kw):
        super().__init__(**kw)
        if self.source is None:
            self.reader_options = {"text_col": text_col, "label_col": label_col}
        if lexicon is not None and (not isinstance(lexicon, str) or not lexicon):
            raise ConfigError(f"data.lexicon={lexicon!r} must be a lexicon's name ({', '.join(LEXICONS)}) or the "
                              "path of a token<TAB>score file, or null")
        self.lexicon_name = lexicon
        self.lexicon: dict[str, float] | None = None  # read in setup, kept in the checkpoint's spec

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is None and self.lexicon_name is not None:
            self.lexicon = read_lexicon(self.lexicon_name)  # before the splits are encoded with it
        super().setup(stage)

    def spec(self) -> dict:
        out = super().spec()
        if self.lexicon is not None:
            out["lexicon"] = self.lexicon
        return out

    def _train_tokens(self, train):
        return (normalize(t, self.norm) for text in train["text"] for t in tokenize(text, self.tokenizer))

    def _train_labels(self, train):
        return set(train["label"])

    def _encode_split(self, data, split):
        out = []
        for i, ex in enumerate(data):
            item = encode_text(ex["text"], self.vocab, self.tokenizer, self.norm, self.lexicon)
            if not item["tokens"]:
                raise DataError(f"{self._where(split)}: example {i} of the {split} split has no tokens")
            if ex["label"] not in self.labels.index:
                raise self._unseen(ex["label"], split)
            item["label"] = self.labels.index[ex["label"]]
            out.append(item)
        return out

