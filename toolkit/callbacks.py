"""Callbacks the training app always uses."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class EpochSeed(pl.Callback):
    """Reseed the random generators from (seed, epoch) at the start of every epoch.

    Together with the epoch-keyed batch order of ``BucketBatchSampler`` this makes
    a run resumed from an epoch-end checkpoint reproduce, to the bit, the run that
    was never interrupted: nothing depends on how much randomness came before.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.current_epoch)
