"""What every head's data module shares: loading the splits, the bucketing sampler, padding.

Each head family has its own module beside this one (``toolkit/data/<head>.py``
mirrors ``toolkit/tasks/<head>.py``), with a ``SplitDataModule`` subclass that
names its reader of user files and encodes one example. Examples come from a named source (``data.source``) or the user's files
(``data.train_file`` / ``val_file`` / ``test_file``), pass through Hugging Face
``datasets`` (cached as Arrow under the HF datasets cache) and are encoded with a
vocabulary built on the training split only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from toolkit.data import sources
from toolkit.data.text import Labels, Vocab
from toolkit.errors import ConfigError, DataError, ToolkitError, whole_number_problem

log = logging.getLogger(__name__)

SPLITS = sources.SPLITS
_FILE_KEYS = {"train": "train_file", "validation": "val_file", "test": "test_file"}


# ----------------------------------------------------------------------------- loading
def _generate(read: Callable[..., list[dict]], origin: str, split: str, options: dict, stamp: str):
    """Rows of one split: a named source's, or ``read(origin, **options)``'s (the head's reader of
    user files); ``stamp`` only keys the HF cache (file size + mtime)."""
    if origin in sources.SOURCES:
        rows = sources.standard_split(sources.SOURCES[origin]())[split]
    else:
        rows = read(origin, **options)
    yield from rows


def _stamp(origin: str) -> str:
    path = Path(origin)
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return origin


def load_splits(kind: str, read: Callable[..., list[dict]], source: str | None, files: dict[str, str | None],
                options: dict) -> dict:
    """{"train", "validation", "test"} -> datasets.Dataset (test may be None for user files).

    ``kind`` (the head's name) keys the cache; ``read`` reads a user file (a path and ``options``)."""
    # here, not at the top: pyarrow and pandas cost seconds, and the config check runs before any data loads
    import datasets

    datasets.disable_progress_bars()
    if source is not None and any(files.values()):
        raise ConfigError("set either data.source or data.train_file/val_file/test_file, not both")
    if source is None and not files.get("train"):
        raise ConfigError(
            "no data: set data.source to a named source or data.train_file to your own file"
        )
    if source is not None and source not in sources.SOURCES:
        raise ConfigError(
            f"data.source={source!r} is not a named source; known: {', '.join(sources.SOURCES)}"
        )
    out = {}
    for split in SPLITS:
        origin = source if source is not None else files.get(split)
        if origin is None:
            out[split] = None
            continue
        key = hashlib.sha1(repr((kind, _stamp(origin), split, sorted(options.items()))).encode()).hexdigest()
        try:
            out[split] = datasets.Dataset.from_generator(
                _generate,
                gen_kwargs={"read": read, "origin": origin, "split": split, "options": options, "stamp": key},
            )
        except datasets.exceptions.DatasetGenerationError as e:
            # the reader's own sentence (file and line, or the missing package), not HF's wrapper
            if isinstance(e.__cause__, ToolkitError):
                raise e.__cause__ from None
            raise
    if source is None and out["validation"] is None:
        # No validation file: carve it out of the training file by the standard rule.
        train = out["train"]
        val_idx = [i for i in range(len(train)) if i % 10 == 1]
        keep = [i for i in range(len(train)) if i % 10 != 1]
        log.warning("no data.val_file: using every 10th training example (i % 10 == 1) for validation")
        out["validation"], out["train"] = train.select(val_idx), train.select(keep)
    return out


# ----------------------------------------------------------------------------- batching
def rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, reshuffled per epoch from (seed, epoch) alone.

    Deriving the order from the epoch number alone (``toolkit.callbacks.Reproducible``
    calls ``set_epoch(trainer.current_epoch)``) makes a resumed run see exactly the
    batches an uninterrupted run would. Under DDP
    it shards whole batches across ranks itself (the Trainer runs with
    ``use_distributed_sampler=False``), so packing and padding stay per rank.
    """

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0,
                 bucketing: bool = True, pool: int = 50):
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
        self.lengths, self.batch_size, self.shuffle = lengths, batch_size, shuffle
        self.seed, self.bucketing, self.pool, self.epoch = seed, bucketing, pool, 0
        self.resume_at = (0, 0)  # (epoch, batches already taken): where an interrupted run stopped
        self._cache: tuple | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (computed once per epoch)."""
        key = (self.epoch, self.bucketing, self.batch_size, *rank_and_world())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._make_batches())
        return self._cache[1]

    def _make_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.lengths)
        rank, world = rank_and_world()
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        if not self.shuffle and world > 1:
            order = order[rank::world]  # evaluation: each example on exactly one rank
        if self.bucketing:
            span = self.batch_size * self.pool
            order = [i for k in range(0, len(order), span)
                     for i in sorted(order[k:k + span], key=self.lengths.__getitem__)]
        out = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if self.shuffle and self.bucketing:
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        if self.shuffle and world > 1:
            # training: every rank must take the same number of steps, so the
            # shortest shard is topped up with batches from the start of the epoch
            out = (out + out[: (-len(out)) % world])[rank::world]
        return out

    def __iter__(self):
        epoch, taken = self.resume_at
        # the length stays the epoch's: Lightning counts the batches taken before the checkpoint
        return iter(self.batches()[taken:] if epoch == self.epoch else self.batches())

    def __len__(self) -> int:
        return len(self.batches())

    def padding_fraction(self) -> float:
        """Share of padded positions over one epoch of these batches."""
        real = padded = 0
        for b in self.batches():
            ls = [self.lengths[i] for i in b]
            real += sum(ls)
            padded += max(ls) * len(ls)
        return 1 - real / padded if padded else 0.0


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Id lists -> (B, longest), filled with ``value`` past each one's end."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


# ----------------------------------------------------------------------------- modules
class BucketedLoaders:
    """The loaders of a data module whose encoded splits are lists in ``self.encoded``
    ("train" / "validation" / "test"): bucketed batches of ``batch_size`` (``eval_batch_size``
    outside training) by the length of each example's ``length_key``, put together by ``collate``."""

    length_key = "tokens"

    def _loader(self, split: str, train: bool) -> DataLoader | None:
        data = self.encoded.get(split)
        if data is None:
            return None
        sampler = BucketBatchSampler(
            [len(x[self.length_key]) for x in data], self.batch_size if train else self.eval_batch_size,
            shuffle=train, seed=self.seed, bucketing=self.bucketing)
        return DataLoader(data, batch_sampler=sampler, collate_fn=self.collate)

    def train_dataloader(self):
        loader = self._loader("train", True)
        self.train_sampler = loader.batch_sampler  # toolkit.callbacks.Reproducible sets its epoch
        self.train_sampler.set_epoch(self.start_epoch)
        self.train_sampler.resume_at = (self.start_epoch, self.start_batch)
        return loader

    def val_dataloader(self):
        return self._loader("validation", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def has_test(self) -> bool:
        return self.encoded.get("test") is not None


class SplitDataModule(BucketedLoaders, pl.LightningDataModule):
    """Shared loading, vocabulary and batching; subclasses encode one example.

    A subclass sets ``kind`` (its head's name), ``read`` (its reader of user files, a
    ``staticmethod``) and ``collate``, and defines ``_train_tokens``, ``_train_labels``
    and ``_encode_split``.
    """

    kind: str
    read: Callable[..., list[dict]]

    def __init__(self, source: str | None = None, train_file: str | None = None,
                 val_file: str | None = None, test_file: str | None = None,
                 tokenizer: str = "words", normalize: str = "lower", min_count: int = 1,
                 max_vocab: int | None = None, batch_size: int = 32, eval_batch_size: int = 256,
                 bucketing: bool = True, seed: int = 0, vocab: list[str] | None = None, **reader_options):
        super().__init__()
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                           ("min_count", min_count), ("max_vocab", max_vocab)):
            if problem := whole_number_problem(f"data.{key}", value, null=key == "max_vocab"):
                raise ConfigError(problem)
        self.source = source
        self.files = {"train": train_file, "validation": val_file, "test": test_file}
        self.tokenizer, self.norm = tokenizer, normalize
        self.min_count, self.max_vocab = min_count, max_vocab
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.bucketing, self.seed = bucketing, seed
        self.reader_options = reader_options
        self.encoded: dict[str, list[dict] | None] = {}
        self.vocab: Vocab | None = None
        self.given_vocab = vocab  # e.g. a language model's (model.init_from): used instead of building one
        self.labels: Labels | None = None
        self.train_sampler: BucketBatchSampler | None = None
        self.start_epoch = 0  # set when resuming …
        self.start_batch = 0  # … and, from a mid-epoch checkpoint, the batches of that epoch already taken
        self.raw: dict = {}

    def prepare_data(self) -> None:
        if self.vocab is None:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        splits = load_splits(self.kind, self.read, self.source,
                             {k: self.files[k] for k in SPLITS}, self.reader_options)
        train = splits["train"]
        if len(train) == 0:
            raise DataError(f"the training split of {self._where('train')} is empty")
        self.vocab = self._build_vocab(train)
        self.labels = Labels(sorted(self._train_labels(train)))
        self.encoded = {s: (None if d is None else self._encode_split(d, s)) for s, d in splits.items()}
        self.raw = splits  # the examples as read (for sample predictions)

    def _build_vocab(self, train) -> Vocab:
        tokens = self._train_tokens(train)
        if self.given_vocab is not None:
            return Vocab(self.given_vocab)
        return Vocab.build(tokens, self.min_count, self.max_vocab)

    def _where(self, split: str) -> str:
        return f"data.source={self.source}" if self.source else str(self.files[split] or self.files["train"])

    def _unseen(self, label: str, split: str) -> DataError:
        return DataError(
            f"{self._where(split)}: label '{label}' in the {split} split never occurs in training "
            f"(training labels: {', '.join(self.labels.names)})"
        )

    def spec(self) -> dict:
        """Plain data a checkpoint keeps so ``rtk predict`` encodes text the same way."""
        return {"kind": self.kind, "tokenizer": self.tokenizer, "normalize": self.norm,
                "vocab": self.vocab.itos, "labels": self.labels.names}

