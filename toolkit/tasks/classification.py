"""Many-to-one: one label per sequence (sentiment, peptides, any text classification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from toolkit.data.classification import collate_classification, encode_text
from toolkit.errors import ConfigError, whole_number_problem
from toolkit.layers import length_mask
from toolkit.tasks.base import SequenceTask, defaults, number_problem

POOLING = ("last", "mean", "max", "attention")


class AttentionPool(nn.Module):
    """Attention pooling (Yang et al. 2016; Lin et al. 2017 with one head): a learned query
    scores each step, and the pooled vector is the softmax-weighted sum of the steps::

        e_t = v^T tanh(W y_t + b),   α = softmax(e) over the sequence's real steps,   pooled = Σ_t α_t y_t

    ``W``: (size, size), ``b``, ``v``: (size,), with size the encoder's output size (H * D).
    """

    def __init__(self, size: int):
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.query = nn.Linear(size, 1, bias=False)

    def scores(self, y: Tensor) -> Tensor:
        """(..., T, size) -> (..., T) unnormalised scores e_t."""
        return self.query(torch.tanh(self.proj(y))).squeeze(-1)

    def forward(self, y: Tensor, mask: Tensor) -> Tensor:
        """(B, T, size), (B, T) bool (True at real steps) -> (B, size)."""
        alpha = self.scores(y).masked_fill(~mask, float("-inf")).softmax(-1)  # (B, T)
        return torch.bmm(alpha[:, None, :], y)[:, 0]


class ClassificationTask(SequenceTask):
    """Encode, pool over the real (unpadded) steps, softmax over the labels."""

    head = "classification"

    def __init__(self, *args, pooling: str = "last", label_smoothing: float = 0.0, adversarial: float = 0.0,
                 adversarial_every: int = 1, **kw):
        super().__init__(*args, pooling=pooling, label_smoothing=label_smoothing, adversarial=adversarial,
                         adversarial_every=adversarial_every, **kw)
        self.out = nn.Linear(self.rnn.output_size, len(self.labels))
        self.attention_pool = AttentionPool(self.rnn.output_size) if pooling == "attention" else None
        n = len(self.labels)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": metric(num_classes=n, average="macro" if name == "f1" else "micro")
            for stage in ("val", "test")
            for name, metric in (("acc", MulticlassAccuracy), ("f1", MulticlassF1Score))
        })

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        out = super().problems(hp)
        hp = defaults(ClassificationTask.__init__) | hp
        if hp["pooling"] not in POOLING:
            out.append(f"model.pooling={hp['pooling']!r} is not one of: {', '.join(POOLING)}")
        if problem := number_problem("model.label_smoothing", hp["label_smoothing"]):
            out.append(problem)
        if problem := number_problem("model.adversarial", hp["adversarial"], high=100.0):
            out.append(problem)
        if problem := whole_number_problem("model.adversarial_every", hp["adversarial_every"]):
            out.append(problem)
        return out

    def pool(self, y: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, H*D) -> (B, H*D) over each sequence's own steps."""
        mask = length_mask(lengths.to(y.device), y.size(1))  # (B, T)
        if self.hparams.pooling == "mean":
            return y.sum(1) / lengths.to(y)[:, None]
        if self.hparams.pooling == "max":
            return y.masked_fill(~mask[..., None], float("-inf")).max(1).values
        if self.hparams.pooling == "attention":
            return self.attention_pool(y, mask)
        return self.last(y, lengths)

    def last(self, y: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, H*D) -> (B, H*D): the forward direction's state after the last real token, and
        (if bidirectional) the reverse direction's state after reading back to token 0."""
        h = self.hparams.hidden_size
        last = y[torch.arange(y.size(0), device=y.device), lengths.to(y.device) - 1]  # (B, H*D)
        if self.rnn.num_directions == 1:
            return last
        return torch.cat([last[:, :h], y[:, 0, h:]], -1)

    def input_size(self) -> int:
        # data.lexicon: each token's lexicon score is one more input, next to its embedding
        return super().input_size() + ("lexicon" in self.hparams.spec)

    def step_inputs(self, batch: dict) -> Tensor:
        """The embeddings, and with a lexicon each token's (B, T) score as one more column."""
        x = super().step_inputs(batch)  # (B, T, E)
        if "lexicon" not in self.hparams.spec:
            return x
        return torch.cat([x, batch["lexicon"].to(x)[..., None]], -1)  # (B, T, E + 1); the score is not dropped

    def forward(self, batch: dict) -> Tensor:
        y = self.encode(batch)  # (B, T, H*D)
        return self.out(self.pool(y, batch["lengths"]))  # (B, n_labels)

    def training_step(self, batch, _):
        # label smoothing (Szegedy et al. 2016) and model.adversarial shape the training loss only;
        # val_loss is the plain one
        loss = self.adversarial_loss(
            lambda: F.cross_entropy(self(batch), batch["labels"], label_smoothing=self.hparams.label_smoothing),
            self.hparams.adversarial, self.hparams.adversarial_every)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage):
        logits = self(batch)
        n = len(batch["lengths"])
        self.log(f"{stage}_loss", F.cross_entropy(logits, batch["labels"]), prog_bar=True, batch_size=n,
                 sync_dist=True)
        for name in ("acc", "f1"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, batch["labels"])
            self.log(f"{stage}_{name}", metric, prog_bar=name == "acc", batch_size=n)

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    @torch.no_grad()
    def predict_text(self, text: str) -> tuple[str, float]:
        """Raw text -> (label, probability) with the tokenizer the model was trained with."""
        spec = self.hparams.spec
        item = encode_text(text, self.vocab, spec["tokenizer"], spec["normalize"], spec.get("lexicon"))
        if not item["tokens"]:
            raise ConfigError(f"text={text!r} has no tokens for this model's tokenizer ({spec['tokenizer']})")
        batch = {k: v.to(self.device) for k, v in collate_classification([item]).items()}
        probs = self(batch).softmax(-1)[0]
        i = int(probs.argmax())
        return self.labels.names[i], float(probs[i])

    def predict_lines(self, text: str) -> list[str]:
        label, prob = self.predict_text(text)
        return [f"{label}\t{prob:.4f}\t{text}"]

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        if not example:
            return None
        label, prob = self.predict_text(example)
        return "predict", [repr(example), f"{label} (p = {prob:.3f})"]

    def sample_table(self, examples) -> tuple[list[str], list[list]]:
        """Gold and predicted labels for a few raw examples (a table for the experiment tracker)."""
        rows = []
        for ex in examples:
            label, prob = self.predict_text(ex["text"])
            rows.append([ex["text"], ex["label"], label, round(prob, 4)])
        return ["text", "gold", "predicted", "probability"], rows


def last_step_loss(model: ClassificationTask, batch: dict) -> Tensor:
    """The gradient diagnostic's loss: the head's 'last' pooling whatever ``model.pooling`` says
    (the loss reads only the last step), summed over the batch."""
    y = model.encode(batch)  # (B, T, H * D)
    return F.cross_entropy(model.out(model.last(y, batch["lengths"])), batch["labels"], reduction="sum")
