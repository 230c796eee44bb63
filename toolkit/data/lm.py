"""Data for the language_model head: next-token prediction over text (or note) sequences.

Two ways to batch, chosen by ``tbptt_steps``:

- per example (``tbptt_steps: null``; ``char_lm``, ``music``): every example is
  its own sequence ``<eos> [condition…] tokens… <eos>``; the model reads all but
  the last token and predicts all but the first. Condition tokens (a chorale's
  mode, ``<major>``) are read but never predicted. Batches are bucketed by length.
- one stream (``tbptt_steps: k``; ``word_lm``): the split's examples, each
  followed by ``<eos>``, are one continuous token stream, cut into ``batch_size``
  parallel rows; batch i holds columns ``i*k … (i+1)*k`` of every row, in order,
  so the model can carry its hidden state from one batch to the next (truncated
  backpropagation through time). Under DDP the rows are split between the ranks.
  The last ``len(stream) % rows`` tokens of a split do not fit a row and are left out.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from toolkit.data import readers
from toolkit.data.base import SplitDataModule, pad, rank_and_world
from toolkit.data.text import EOS, PAD, UNK, Vocab, normalize, tokenize
from toolkit.errors import ConfigError, DataError, whole_number_problem


def encode_lm(tokens: list[str], condition: list[str], vocab: Vocab) -> dict:
    """Input ids and target ids (-100 where the target is a condition token)."""
    full = vocab.encode([EOS, *condition, *tokens, EOS])
    targets = full[1:]
    targets[: len(condition)] = [-100] * len(condition)
    return {"tokens": full[:-1], "targets": targets}


def collate_lm(items: list[dict]) -> dict:
    return {"tokens": pad([it["tokens"] for it in items], 0),
            "targets": pad([it["targets"] for it in items], -100),
            "lengths": torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long)}


class StreamOrder(Sampler[int]):
    """The chunks of a stream in order; a run resumed mid-epoch starts after the chunks it already took."""

    def __init__(self, n: int):
        self.n, self.epoch, self.resume_at = n, 0, (0, 0)

    def set_epoch(self, epoch: int) -> None:  # the order never changes; the epoch only matters for resuming
        self.epoch = epoch

    def __iter__(self):
        epoch, taken = self.resume_at
        return iter(range(taken if epoch == self.epoch else 0, self.n))

    def __len__(self) -> int:
        return self.n


class LanguageModelDataModule(SplitDataModule):
    """Examples are {"text"} (tokenised with ``tokenizer``) or pre-tokenised {"tokens", "condition"}."""

    kind = "language_model"
    read = staticmethod(readers.read_lines)
    collate = staticmethod(collate_lm)

    def __init__(self, *, tbptt_steps: int | None = None, tokenizer: str = "words",
                 normalize: str = "lower", **kw):
        super().__init__(tokenizer=tokenizer, normalize=normalize, **kw)
        if problem := whole_number_problem("model.tbptt_steps", tbptt_steps, least=2, null=True):
            raise ConfigError(problem)
        self.tbptt_steps = tbptt_steps
        self.conditions: list[str] = []

    # ------------------------------------------------------------------ tokens
    def _tokens(self, ex: dict) -> tuple[list[str], list[str]]:
        if ex.get("tokens") is not None:
            return list(ex["tokens"]), list(ex.get("condition") or [])
        return [normalize(t, self.norm) for t in tokenize(ex["text"], self.tokenizer)], []

    def _train_tokens(self, train):
        for ex in train:
            toks, cond = self._tokens(ex)
            yield from toks
            yield from cond

    def _build_vocab(self, train) -> Vocab:
        built = Vocab.build(self._train_tokens(train), self.min_count, self.max_vocab)
        self.conditions = sorted({c for ex in train for c in self._tokens(ex)[1]})
        if self.tbptt_steps is not None and self.conditions:
            raise ConfigError(f"{self._where('train')} has condition tokens ({', '.join(self.conditions)}), "
                              "which only per-example batches can hold; set model.tbptt_steps=null")
        return Vocab([PAD, UNK, EOS, *(t for t in built.itos[2:] if t != EOS)])

    def _train_labels(self, train):
        return set()

    def spec(self) -> dict:
        return {**super().spec(), "conditions": self.conditions, "source": self.source}

    def _encode_split(self, data, split):
        out = []
        for i, ex in enumerate(data):
            toks, cond = self._tokens(ex)
            if not toks:
                raise DataError(f"{self._where(split)}: example {i} of the {split} split has no tokens")
            out.append(encode_lm(toks, cond, self.vocab))
        if self.tbptt_steps is None:
            return out
        eos = self.vocab.stoi[EOS]
        stream = [eos]
        for item in out:
            stream.extend(item["tokens"][1:])  # the tokens, without the leading <eos> …
            stream.append(eos)                 # … and the closing one
        return [{"stream": stream}]

    # ----------------------------------------------------------------- batches
    def _loader(self, split: str, train: bool) -> DataLoader | None:
        data = self.encoded.get(split)
        if data is None:
            return None
        if self.tbptt_steps is None:
            return super()._loader(split, train)
        chunks = self.stream_batches(data[0]["stream"], self.batch_size if train else self.eval_batch_size)
        return DataLoader(chunks, batch_size=None, sampler=StreamOrder(len(chunks)) if train else None)

    def stream_batches(self, stream: list[int], rows: int) -> list[dict]:
        """This rank's chunks of ``rows`` parallel rows, ``tbptt_steps`` columns each, in order."""
        rank, world = rank_and_world()
        ids = torch.tensor(stream, dtype=torch.long)
        width = (len(ids) - 1) // (rows * world)
        if width < 1:
            raise DataError(f"a split of {len(ids)} tokens is too short for {rows * world} rows; "
                            "lower data.batch_size / data.eval_batch_size")
        n = width * rows * world
        x = ids[:n].view(rows * world, width)[rank * rows:(rank + 1) * rows]
        y = ids[1:n + 1].view(rows * world, width)[rank * rows:(rank + 1) * rows]
        k = self.tbptt_steps
        return [{"tokens": x[:, i:i + k], "targets": y[:, i:i + k],
                 "lengths": torch.full((rows,), min(k, width - i), dtype=torch.long),
                 "first": torch.tensor(i == 0)}
                for i in range(0, width, k)]

    def train_dataloader(self):
        if self.tbptt_steps is None:
            return super().train_dataloader()
        loader = self._loader("train", True)
        self.train_sampler = loader.sampler
        self.train_sampler.set_epoch(self.start_epoch)
        self.train_sampler.resume_at = (self.start_epoch, self.start_batch)
        return loader
