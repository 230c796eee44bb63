"""Data for the seq2seq head: pairs (many-to-many, Tx != Ty): a spelling -> a token sequence.

An example is a source string and every reference target for it, ``{"word", "prons"}``:
a CMUdict headword with all its pronunciations (``g2p``), or the rows of a user's CSV /
JSONL file grouped by source (``seq2seq``), so a source never sits in two splits.
The source is read one token per character (``data.tokenizer: chars``), the target
is its space-separated tokens.

- Training: every reference is its own training pair. Evaluation accepts any listed
  pronunciation, so the variants are right answers to learn, and keeping only the
  first would drop 9,114 of CMUdict's 135,166 pronunciations (``read``: R EH D and R IY D).
- Evaluation: one item per source, with all its references for the error rates and
  the first one for the (teacher-forced) loss.

Target ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, then the training targets' tokens
(``spec["labels"]``, sorted) from 3 on.
"""

from __future__ import annotations

import re

import torch

from toolkit.data import readers, text
from toolkit.data.base import SplitDataModule, pad
from toolkit.errors import ConfigError, DataError

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_STRESS = re.compile(r"(?<=[A-Za-z])[012]$")  # ARPAbet vowels carry 0 (none), 1 (primary), 2 (secondary)


def strip_stress(pron: list[str]) -> list[str]:
    """ARPAbet without stress: ``AH0`` -> ``AH`` (the 39-phoneme set of Yao & Zweig 2015)."""
    return [_STRESS.sub("", p) for p in pron]


def collate_pairs(items: list[dict]) -> dict:
    """Source ids (B, S) and lengths; with targets, the decoder's input ``<bos> y1 … yn`` and
    output ``y1 … yn <eos>`` (B, n+1), output padding -100; with references, their label ids."""
    batch = {
        "tokens": pad([it["tokens"] for it in items], PAD_ID),
        "lengths": torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long),
    }
    if "target" in items[0]:
        target = [[t + len(SPECIALS) for t in it["target"]] for it in items]
        batch["dec_in"] = pad([[BOS_ID, *t] for t in target], PAD_ID)
        batch["dec_out"] = pad([[*t, EOS_ID] for t in target], -100)
    if "refs" in items[0]:
        batch["refs"] = [it["refs"] for it in items]  # plain lists: Lightning moves only tensors
    return batch


class PairsDataModule(SplitDataModule):
    """Source strings and their target sequences (``g2p``, ``seq2seq``)."""

    kind = "seq2seq"
    read = staticmethod(readers.read_pairs)
    collate = staticmethod(collate_pairs)

    def __init__(self, *, source_col: str = "source", target_col: str = "target", stress: bool = True,
                 tokenizer: str = "chars", normalize: str = "none", **kw):
        if not isinstance(stress, bool):
            raise ConfigError(f"data.stress={stress!r} must be true (keep the targets as written) or false "
                              "(drop ARPAbet stress digits: AH0 -> AH)")
        text.tokenize("", tokenizer), text.normalize("", normalize)  # a bad name fails now, not mid-setup
        super().__init__(tokenizer=tokenizer, normalize=normalize, **kw)
        self.stress = stress
        self.max_target_len = 0  # the longest training target: bounds decoding at predict time
        if self.source is None:
            self.reader_options = {"source_col": source_col, "target_col": target_col}

    def spec(self) -> dict:
        return {**super().spec(), "max_target_len": self.max_target_len, "stress": self.stress}

    def source_tokens(self, word: str) -> list[str]:
        return [text.normalize(t, self.norm) for t in text.tokenize(word, self.tokenizer)]

    def references(self, prons: list[list[str]]) -> list[list[str]]:
        """A source's targets as used: stress dropped if asked, then duplicates removed (order kept)."""
        if not self.stress:
            prons = [strip_stress(p) for p in prons]
        return [list(p) for p in dict.fromkeys(map(tuple, prons))]

    def _train_tokens(self, train):
        return (t for word in train["word"] for t in self.source_tokens(word))

    def _train_labels(self, train):
        labels: set[str] = set()
        for prons in train["prons"]:
            for pron in self.references(prons):
                labels.update(pron)
                self.max_target_len = max(self.max_target_len, len(pron))
        return labels

    def _encode_split(self, data, split):
        out = []
        for i, (word, prons) in enumerate(zip(data["word"], data["prons"])):
            tokens = self.vocab.encode(self.source_tokens(word))
            if not tokens:
                raise DataError(f"{self._where(split)}: example {i} of the {split} split ({word!r}) has no "
                                f"tokens for data.tokenizer={self.tokenizer}")
            try:
                refs = [[self.labels.index[t] for t in pron] for pron in self.references(prons)]
            except KeyError as e:
                raise self._unseen(e.args[0], split) from None
            if split == "train":
                out += [{"tokens": tokens, "target": ref} for ref in refs]
            else:
                out.append({"tokens": tokens, "target": refs[0], "refs": refs})
        return out
