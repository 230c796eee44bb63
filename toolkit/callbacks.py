"""Callbacks the training app always uses."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class Reproducible(pl.Callback):
    """Make every random choice of training a function of (seed, epoch, step) alone.

    - The batch order of an epoch comes from ``set_epoch(trainer.current_epoch)``
      on the datamodule's ``BucketBatchSampler`` (Lightning's own ``set_epoch``
      call passes a progress counter that differs after a resume, and reaches
      only ``batch_sampler.sampler``).
    - torch's generator is reseeded from (seed, global step) before every batch,
      so dropout masks do not depend on how much randomness Lightning or the
      data loaders drew before.

    A run resumed from a checkpoint therefore reproduces, to the bit, the run
    that was never interrupted.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = getattr(trainer.datamodule, "train_sampler", None)
        if sampler is not None:
            sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.global_step)
