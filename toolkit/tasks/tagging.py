"""Many-to-many, Tx = Ty: one tag per token (named-entity recognition and any BIO tagging)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from seqeval.metrics import f1_score, precision_score, recall_score
from torch import Tensor, nn

from toolkit.data.modules import collate_tagging, encode_tagging
from toolkit.data.text import SHAPES, tokenize
from toolkit.tasks.base import SequenceTask


class TaggingTask(SequenceTask):
    """Per-token softmax over the tag set; entity-level F1 / precision / recall (seqeval)."""

    head = "tagging"

    def __init__(self, *args, shape_dim: int = 16, **kw):
        self._shape_dim = shape_dim
        super().__init__(*args, shape_dim=shape_dim, **kw)
        self.shape_embed = nn.Embedding(len(SHAPES), shape_dim, padding_idx=0)
        self.out = nn.Linear(self.rnn.output_size, len(self.labels))
        self._gold: list[list[str]] = []
        self._pred: list[list[str]] = []

    def input_size(self) -> int:
        return self.hparams.embedding_dim + self._shape_dim

    def forward(self, batch: dict) -> Tensor:
        x = torch.cat([self.embed(batch["tokens"]), self.shape_embed(batch["shapes"])], -1)  # (B, T, E+S)
        y, _ = self.rnn(self.drop(x), lengths=batch["lengths"])  # (B, T, H*D)
        return self.out(self.drop(y))  # (B, T, n_tags)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits = self(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["tags"].flatten(), ignore_index=-100)
        return loss, logits

    def training_step(self, batch, _):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage):
        loss, logits = self._loss(batch)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]))
        names = self.labels.names
        for pred, gold, n in zip(logits.argmax(-1).tolist(), batch["tags"].tolist(), batch["lengths"].tolist()):
            self._pred.append([names[i] for i in pred[:n]])
            self._gold.append([names[i] for i in gold[:n]])

    def _eval_end(self, stage):
        gold, pred = self._gold, self._pred
        self._gold, self._pred = [], []
        if not gold:
            return
        kw = {"zero_division": 0}
        self.log(f"{stage}_f1", float(f1_score(gold, pred, **kw)), prog_bar=True)
        self.log(f"{stage}_precision", float(precision_score(gold, pred, **kw)))
        self.log(f"{stage}_recall", float(recall_score(gold, pred, **kw)))

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
        spec = self.hparams.spec
        tokens = tokenize(text, spec["tokenizer"])
        if not tokens:
            return []
        batch = collate_tagging([encode_tagging(tokens, self.vocab, spec["normalize"])])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        tags = self(batch)[0].argmax(-1).tolist()
        return [(t, self.labels.names[i]) for t, i in zip(tokens, tags)]
