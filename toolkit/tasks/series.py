"""Many-to-one on real-valued sequences: speech frames, motion sensors, video tracks.

x (B, T, F) floats -> standardise each channel with the training split's mean and
standard deviation (kept in the checkpoint) -> optionally average each k consecutive
frames into one step (``model.downsample``, piecewise aggregate approximation: T -> ceil(T / k)
steps, a last partial window averaged over its own frames) -> optionally a linear projection F -> P
-> Recurrent -> pool over each sequence's own steps -> softmax over the classes, or
one number (``data.target=regression``: MSE / MAE reported in the target's own units).

Training only, on the standardised input: ``model.augment_scale`` multiplies each
sequence's channels by factors drawn from N(1, s^2) and ``model.augment_noise`` adds
N(0, n^2) to every value (jitter), a fresh draw each batch; evaluation and prediction
read the data as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from toolkit.data.series import collate_series, read_series
from toolkit.errors import ConfigError, DataError, whole_number_problem
from toolkit.layers import length_mask
from toolkit.tasks.base import SequenceTask, defaults, number_problem
from toolkit.tasks.classification import POOLING, AttentionPool, ClassificationTask


class SeriesTask(SequenceTask):
    """Standardise, (project,) encode, pool, then classify or regress."""

    head = "series"

    def __init__(self, *args, pooling: str = "last", projection: int | None = None, downsample: int = 1,
                 augment_scale: float = 0.0, augment_noise: float = 0.0, **kw):
        super().__init__(*args, pooling=pooling, projection=projection, downsample=downsample,
                         augment_scale=augment_scale, augment_noise=augment_noise, **kw)
        spec = self.hparams.spec
        self.regression = spec["target"] == "regression"
        # the training split's statistics: buffers, so they follow the model to its device
        self.register_buffer("mean", torch.tensor(spec["mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(spec["std"], dtype=torch.float32), persistent=False)
        self.project = nn.Linear(spec["features"], projection) if projection else None
        self.out = nn.Linear(self.rnn.output_size, 1 if self.regression else len(self.labels))
        self.attention_pool = AttentionPool(self.rnn.output_size) if pooling == "attention" else None
        if self.regression:
            self.metrics = nn.ModuleDict({f"{stage}_{name}": metric() for stage in ("val", "test")
                                          for name, metric in (("mse", MeanSquaredError), ("mae", MeanAbsoluteError))})
        else:
            n = len(self.labels)
            self.metrics = nn.ModuleDict({
                f"{stage}_{name}": metric(num_classes=n, average="macro" if name == "f1" else "micro")
                for stage in ("val", "test") for name, metric in (("acc", MulticlassAccuracy), ("f1", MulticlassF1Score))
            })

    @classmethod
    def problems(cls, hp: dict) -> list[str]:
        out = super().problems(hp)
        hp = defaults(SeriesTask.__init__) | hp
        if hp["pooling"] not in POOLING:
            out.append(f"model.pooling={hp['pooling']!r} is not one of: {', '.join(POOLING)}")
        if problem := whole_number_problem("model.projection", hp["projection"], null=True):
            out.append(problem)
        if problem := whole_number_problem("model.downsample", hp["downsample"]):
            out.append(problem)
        for key in ("augment_scale", "augment_noise"):
            if problem := number_problem(f"model.{key}", hp[key], high=10.0):
                out.append(problem)
        return out

    # the text classifier's pooling over each sequence's own steps (model.pooling: last | mean | max | attention)
    pool = ClassificationTask.pool
    last = ClassificationTask.last

    def input_size(self) -> int:
        return self.hparams.projection or self.hparams.spec["features"]

    def step_lengths(self, batch: dict) -> Tensor:
        """(B,) the number of recurrent steps of each sequence: ceil(T_i / model.downsample)."""
        k = self.hparams.downsample
        return batch["lengths"] if k == 1 else (batch["lengths"] + k - 1) // k

    def augment(self, x: Tensor) -> Tensor:
        """(B, T, F) standardised training input -> the same with each sequence's channels scaled by
        N(1, augment_scale^2) and N(0, augment_noise^2) added to every value."""
        scale, noise = self.hparams.augment_scale, self.hparams.augment_noise
        if scale:
            x = x * (1 + scale * torch.randn(x.size(0), 1, x.size(2), device=x.device, dtype=x.dtype))
        if noise:
            x = x + noise * torch.randn_like(x)
        return x

    def window_means(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, F) -> (B, ceil(T / k), F): the mean of each window of k frames, over the
        sequence's own frames only (padding never enters a window's mean)."""
        k = self.hparams.downsample
        if k == 1:
            return x
        B, T, n_features = x.shape
        real = length_mask(lengths.to(x.device), T).to(x.dtype)  # (B, T)
        pad = -T % k
        sums = F.pad(x * real[..., None], (0, 0, 0, pad)).view(B, -1, k, n_features).sum(2)
        counts = F.pad(real, (0, pad)).view(B, -1, k).sum(2).clamp(min=1)  # a padded window: 0 / 1
        return sums / counts[..., None]

    def encode(self, batch: dict) -> Tensor:
        """(B, T, F) raw features -> (B, T', H * num_directions) with T' = ceil(T / model.downsample),
        zero at padded steps."""
        x = (batch["x"] - self.mean) / self.std  # (B, T, F); padded steps are never read (lengths)
        if self.training:
            x = self.augment(x)
        x = self.window_means(x, batch["lengths"])  # (B, T', F)
        if self.project is not None:
            x = self.project(x)  # (B, T', P)
        y, _ = self.rnn(x, lengths=self.step_lengths(batch), final_state=False)
        return self.drop(y)

    def forward(self, batch: dict) -> Tensor:
        """(B, n_labels) logits, or (B,) standardised targets."""
        out = self.out(self.pool(self.encode(batch), self.step_lengths(batch)))
        return out.squeeze(-1) if self.regression else out

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        return F.mse_loss(out, batch["targets"]) if self.regression else F.cross_entropy(out, batch["labels"])

    def to_units(self, out: Tensor) -> Tensor:
        """Standardised regression outputs (or targets) -> the target's own units."""
        return out * self.hparams.spec["y_std"] + self.hparams.spec["y_mean"]

    def training_step(self, batch, _):
        loss = self.loss(self(batch), batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["lengths"]))
        return loss

    def _eval_step(self, batch, stage):
        out = self(batch)
        n = len(batch["lengths"])
        self.log(f"{stage}_loss", self.loss(out, batch), prog_bar=True, batch_size=n, sync_dist=True)
        names = ("mse", "mae") if self.regression else ("acc", "f1")
        pred, gold = ((self.to_units(out), self.to_units(batch["targets"])) if self.regression
                      else (out, batch["labels"]))
        for name in names:
            metric = self.metrics[f"{stage}_{name}"]
            metric(pred, gold)
            self.log(f"{stage}_{name}", metric, prog_bar=name in ("acc", "mse"), batch_size=n)

    def validation_step(self, batch, i):
        self._eval_step(batch, "val")

    def test_step(self, batch, i):
        self._eval_step(batch, "test")

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_arrays(self, xs: list[np.ndarray], batch_size: int = 256) -> list[tuple[str, float]] | list[float]:
        """(T_i, F) arrays -> (label, probability) per sequence, or the predicted number (regression)."""
        out = []
        for k in range(0, len(xs), batch_size):
            batch = collate_series([{"x": torch.as_tensor(x, dtype=torch.float32)} for x in xs[k:k + batch_size]])
            scores = self({key: v.to(self.device) for key, v in batch.items()})
            if self.regression:
                out += self.to_units(scores).tolist()
            else:
                probs, best = scores.softmax(-1).max(-1)
                out += [(self.labels.names[i], p) for i, p in zip(best.tolist(), probs.tolist())]
        return out

    def read_file(self, path: str | Path) -> list[dict]:
        """A .ts / .npz / long CSV file read as in training (the same missing-value rule and CSV columns)."""
        spec = self.hparams.spec
        rows = read_series(path, spec["missing"], **spec["csv"])
        for i, ex in enumerate(rows):
            if ex["x"].shape[1] != spec["features"]:
                raise DataError(f"{path}: sequence {i} has {ex['x'].shape[1]} features; this model was trained on "
                                f"{spec['features']}")
        return rows

    def predict_file_lines(self, path: str | Path) -> list[str]:
        """``rtk predict input=FILE``: one line per sequence, ``index<TAB>label<TAB>probability``
        (regression: ``index<TAB>value``), followed by the file's own label where it has one."""
        rows = self.read_file(path)
        lines = []
        for i, (ex, pred) in enumerate(zip(rows, self.predict_arrays([ex["x"] for ex in rows]))):
            shown = f"{pred:.4f}" if self.regression else f"{pred[0]}\t{pred[1]:.4f}"
            lines.append(f"{i}\t{shown}" + ("" if ex["y"] is None else f"\tgold {ex['y']}"))
        return lines

    def predict_lines(self, text: str) -> list[str]:
        raise ConfigError("a series model reads sequences from a file: rtk predict ckpt=… input=FILE.npz "
                          "(or .ts, or a long-format .csv)")

    def showcase(self, example: str | None, data=None) -> tuple[str, list[str]] | None:
        """The first three test (else validation) sequences: prediction and gold."""
        split = next((s for s in ("test", "validation") if data is not None and data.encoded.get(s)), None)
        if split is None:
            return None
        items = data.encoded[split][:3]
        preds = self.predict_arrays([it["x"].numpy() for it in items])
        lines = []
        for i, (it, pred) in enumerate(zip(items, preds)):
            if self.regression:
                gold = it["target"] * self.hparams.spec["y_std"] + self.hparams.spec["y_mean"]
                lines.append(f"{split} sequence {i} ({len(it['x'])} steps): {pred:.4f} · gold {gold:.4f}")
            else:
                lines.append(f"{split} sequence {i} ({len(it['x'])} steps): {pred[0]} (p = {pred[1]:.3f}) · "
                             f"gold {self.labels.names[it['label']]}")
        return "predict", lines


def last_step_loss(model: SeriesTask, batch: dict) -> Tensor:
    """The gradient diagnostic's loss: the prediction from the last step ('last' pooling whatever
    ``model.pooling`` says), summed over the batch."""
    out = model.out(model.last(model.encode(batch), model.step_lengths(batch)))
    if model.regression:
        return F.mse_loss(out.squeeze(-1), batch["targets"], reduction="sum")
    return F.cross_entropy(out, batch["labels"], reduction="sum")
