"""Many-to-many, Tx = Ty: one tag per token (named-entity recognition and any BIO tagging)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from seqeval.metrics import f1_score, precision_score, recall_score
from torch import Tensor, nn

from toolkit.data.modules import collate_tagging, encode_tagging
from toolkit.data.text import SHAPES, Vocab, tokenize
from toolkit.errors import ConfigError
from toolkit.tasks.base import SequenceTask


def bio_constraints(labels: list[str]) -> tuple[Tensor, Tensor] | None:
    """For BIO tags: allowed[i, j] says tag j may follow tag i, start[j] that j may open a sentence.

    ``I-x`` may only follow ``B-x`` or ``I-x``. None when the labels are not BIO.
    """
    if not all(t == "O" or t[:2] in ("B-", "I-") for t in labels):
        return None
    allowed = torch.ones(len(labels), len(labels), dtype=torch.bool)
    for j, tag in enumerate(labels):
        if tag.startswith("I-"):
            for i, prev in enumerate(labels):
                allowed[i, j] = prev != "O" and prev[2:] == tag[2:]
    start = torch.tensor([not t.startswith("I-") for t in labels])
    return allowed, start


def viterbi(log_probs: Tensor, lengths: Tensor, allowed: Tensor, start: Tensor) -> list[list[int]]:
    """The most probable tag sequence that obeys the transitions, per sentence.

    log_probs: (B, T, K) per-token log-probabilities; lengths: (B,).
    """
    b, t, _ = log_probs.shape
    blocked = torch.tensor(float("-inf"), device=log_probs.device)
    trans = torch.where(allowed.to(log_probs.device), 0.0, blocked)  # (K, K)
    score = log_probs[:, 0] + torch.where(start.to(log_probs.device), 0.0, blocked)  # (B, K)
    back = []
    for step in range(1, t):
        best, idx = (score[:, :, None] + trans[None]).max(1)  # (B, K): best previous tag for each tag
        live = (lengths.to(log_probs.device) > step)[:, None]  # (B, 1)
        score = torch.where(live, best + log_probs[:, step], score)
        back.append(idx)
    paths = []
    for i, n in enumerate(lengths.tolist()):
        tag = int(score[i].argmax())
        path = [tag]
        for step in range(n - 1, 0, -1):
            tag = int(back[step - 1][i, tag])
            path.append(tag)
        paths.append(path[::-1])
    return paths


class CharCNN(nn.Module):
    """A word's characters -> one vector: embed, convolve, max over the word (Chiu & Nichols 2016).

    Spelling carries what a word embedding of rare words cannot: capitals,
    suffixes, the look of a name.
    """

    def __init__(self, n_chars: int, char_dim: int, filters: int, kernel: int):
        super().__init__()
        self.embed = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, kernel, padding=kernel // 2)

    def forward(self, chars: Tensor) -> Tensor:
        b, t, w = chars.shape
        x = self.embed(chars.view(b * t, w)).transpose(1, 2)  # (B*T, C, W)
        y = self.conv(x).masked_fill((chars.view(b * t, 1, w) == 0), float("-inf"))  # (B*T, F, W)
        y = y.max(-1).values  # (B*T, F)
        return torch.nan_to_num(y, neginf=0.0).view(b, t, -1)  # padded tokens have no chars -> 0


class TaggingTask(SequenceTask):
    """Per-token softmax over the tag set; entity-level F1 / precision / recall (seqeval).

    Each token is its word embedding, a shape embedding (capitalisation, mention,
    hashtag, …) and, when ``char_filters > 0``, a character CNN.
    """

    head = "tagging"

    def __init__(self, *args, shape_dim: int = 16, char_dim: int = 25, char_filters: int = 50,
                 char_kernel: int = 3, decode: str = "viterbi", **kw):
        if decode not in ("viterbi", "greedy"):
            raise ConfigError(f"model.decode={decode!r} must be 'viterbi' (BIO-valid tag sequences) or 'greedy'")
        if char_kernel < 1 or char_kernel % 2 == 0:
            raise ConfigError(f"model.char_kernel={char_kernel} must be an odd whole number (the "
                              "convolution keeps a word's length only with an odd width)")
        self._extra_dim = shape_dim + char_filters
        super().__init__(*args, shape_dim=shape_dim, char_dim=char_dim, char_filters=char_filters,
                         char_kernel=char_kernel, decode=decode, **kw)
        self.shape_embed = nn.Embedding(len(SHAPES), shape_dim, padding_idx=0)
        self.char_cnn = (CharCNN(len(self.hparams.spec["chars"]), char_dim, char_filters, char_kernel)
                         if char_filters > 0 else None)
        self.chars = Vocab(self.hparams.spec["chars"])
        self.constraints = bio_constraints(self.labels.names) if decode == "viterbi" else None
        self.out = nn.Linear(self.rnn.output_size, len(self.labels))
        self._gold: list[list[str]] = []
        self._pred: list[list[str]] = []

    def input_size(self) -> int:
        return self.hparams.embedding_dim + self._extra_dim

    def forward(self, batch: dict) -> Tensor:
        parts = [self.embed(batch["tokens"]), self.shape_embed(batch["shapes"])]  # (B, T, E), (B, T, S)
        if self.char_cnn is not None:
            parts.append(self.char_cnn(batch["chars"]))  # (B, T, F)
        y, _ = self.rnn(self.drop(torch.cat(parts, -1)), lengths=batch["lengths"])  # (B, T, H*D)
        return self.out(self.drop(y))  # (B, T, n_tags)

    def decode(self, logits: Tensor, lengths: Tensor) -> list[list[int]]:
        """(B, T, K) scores -> tag ids per sentence: BIO-constrained Viterbi, or argmax."""
        if self.constraints is None:
            return [row[:n] for row, n in zip(logits.argmax(-1).tolist(), lengths.tolist())]
        return viterbi(logits.log_softmax(-1), lengths, *self.constraints)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits = self(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["tags"].flatten(), ignore_index=-100)
        return loss, logits

    def training_step(self, batch, _):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage):
        loss, logits = self._loss(batch)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]), sync_dist=True)
        names = self.labels.names
        for pred, gold, n in zip(self.decode(logits, batch["lengths"]), batch["tags"].tolist(),
                                 batch["lengths"].tolist()):
            self._pred.append([names[i] for i in pred[:n]])
            self._gold.append([names[i] for i in gold[:n]])

    def _eval_end(self, stage):
        gold, pred = self._gold, self._pred
        self._gold, self._pred = [], []
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # each rank saw different sentences: the entity counts must cover them all
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (gold, pred))
            gold = [s for g, _ in parts for s in g]
            pred = [s for _, p in parts for s in p]
        if not gold:
            return
        kw = {"zero_division": 0}
        # identical on every rank after the gather, so no further reduction is needed
        self.log(f"{stage}_f1", float(f1_score(gold, pred, **kw)), prog_bar=True, sync_dist=True)
        self.log(f"{stage}_precision", float(precision_score(gold, pred, **kw)), sync_dist=True)
        self.log(f"{stage}_recall", float(recall_score(gold, pred, **kw)), sync_dist=True)

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    @torch.no_grad()
    def predict_text(self, text: str) -> list[tuple[str, str]]:
        """Raw text -> [(token, tag), ...] with the tokenizer the model was trained with."""
        tokens = tokenize(text, self.hparams.spec["tokenizer"])
        return list(zip(tokens, self.predict_tokens(tokens))) if tokens else []

    @torch.no_grad()
    def predict_tokens(self, tokens: list[str]) -> list[str]:
        """Already split tokens -> one tag each."""
        batch = collate_tagging([encode_tagging(tokens, self.vocab, self.hparams.spec["normalize"], self.chars)])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return [self.labels.names[i] for i in self.decode(self(batch), batch["lengths"])[0]]

    def predict_lines(self, text: str) -> list[str]:
        return [f"{token}\t{tag}" for token, tag in self.predict_text(text)]

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        if not example:
            return None
        return "predict", [repr(example), " ".join(f"{tok}/{tag}" for tok, tag in self.predict_text(example))]

    def sample_table(self, examples) -> tuple[list[str], list[list[str]]]:
        """Gold and predicted tags for a few raw examples (a table for the experiment tracker)."""
        rows = [[" ".join(ex["tokens"]), " ".join(ex["tags"]), " ".join(self.predict_tokens(ex["tokens"]))]
                for ex in examples]
        return ["tokens", "gold", "predicted"], rows
