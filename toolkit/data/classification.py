"""Data for the classification head (many-to-one): a sequence and one label
(``sentiment``, ``peptides``, ``classification``).

User files are CSV / JSONL tables (:func:`toolkit.data.readers.read_table`).
"""

from __future__ import annotations

import torch

from toolkit.data import readers
from toolkit.data.base import SplitDataModule, pad
from toolkit.data.text import Vocab, normalize, tokenize
from toolkit.errors import DataError


def encode_text(text: str, vocab: Vocab, tokenizer: str, norm: str) -> dict:
    toks = tokenize(text, tokenizer)
    return {"tokens": vocab.encode(normalize(t, norm) for t in toks)}


def collate_classification(items: list[dict]) -> dict:
    batch = {
        "tokens": pad([it["tokens"] for it in items], 0),
        "lengths": torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long),
    }
    if "label" in items[0]:
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


class ClassificationDataModule(SplitDataModule):
    """A sequence and one label (``sentiment``, ``peptides``, ``classification``)."""

    kind = "classification"
    read = staticmethod(readers.read_table)
    collate = staticmethod(collate_classification)

    def __init__(self, *, text_col: str = "text", label_col: str = "label", **kw):
        super().__init__(**kw)
        if self.source is None:
            self.reader_options = {"text_col": text_col, "label_col": label_col}

    def _train_tokens(self, train):
        return (normalize(t, self.norm) for text in train["text"] for t in tokenize(text, self.tokenizer))

    def _train_labels(self, train):
        return set(train["label"])

    def _encode_split(self, data, split):
        out = []
        for i, ex in enumerate(data):
            item = encode_text(ex["text"], self.vocab, self.tokenizer, self.norm)
            if not item["tokens"]:
                raise DataError(f"{self._where(split)}: example {i} of the {split} split has no tokens")
            if ex["label"] not in self.labels.index:
                raise self._unseen(ex["label"], split)
            item["label"] = self.labels.index[ex["label"]]
            out.append(item)
        return out

