"""The callbacks the training app always uses (the checkpoint writer: ``toolkit.checkpoints``)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from toolkit.errors import Interrupted, NumericError


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


class NonFinite(pl.Callback):
    """Stop the run, in one sentence, at the first loss or gradient that is not a finite number.

    Training on after a nan only writes nan weights over good ones: Lightning would
    save them as the next ``last.ckpt``. Stopping at the step keeps the last good
    checkpoint on disk, and the sentence names the step, the epoch and the batch.
    """

    def __init__(self) -> None:
        self.batch_idx = 0

    def where(self, trainer: pl.Trainer) -> str:
        return f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self.batch_idx})"

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NumericError(f"the loss became {_nonfinite_name(loss)} at {self.where(trainer)}; "
                               f"lower model.lr or {_clip_hint(pl_module)}")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # before clipping: clipping a nan gives nan. One fused norm per step (a per-parameter
        # isfinite check cost ~7 % of a NER training step); a norm that is not finite may also
        # be a finite gradient whose square overflowed, so the suspects are checked exactly.
        named = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))
        if bool(torch.isfinite(norms).all()):
            return
        for (name, grad), norm in zip(named, norms.tolist()):
            if not math.isfinite(norm) and not torch.isfinite(grad).all():
                raise NumericError(f"the gradient of {name} became {_nonfinite_name(grad)} at "
                                   f"{self.where(trainer)}; lower model.lr or {_clip_hint(pl_module)}")


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` after every epoch, and where SIGINT (Ctrl-C) or SIGTERM stops training.

    During training a signal only raises a flag, so the step in progress finishes. The run
    then stops at the next point a checkpoint resumes from exactly: after a training batch
    that completed an optimizer step with no validation due next, at the end of a
    validation inside an epoch, or at the end of an epoch. There it writes last.ckpt
    (atomically, through :class:`toolkit.checkpoints.AtomicCheckpointIO`) and raises :class:`Interrupted`. A
    second signal stops at once; the last.ckpt already on disk stays whole. Under DDP the
    ranks agree on the stop (any rank's signal stops all of them at the same batch).

    A checkpoint callback, so Lightning runs it after the "best" one: an epoch's best.ckpt
    is written before the run stops at that epoch's end.
    """

    def __init__(self, dirpath: Path):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_on_train_epoch_end=True)  # every epoch, validated or not
        self.path = Path(dirpath) / "last.ckpt"
        self.signum: int | None = None
        self._previous: dict = {}

    def _flag(self, signum, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.signum = None
        # installed after Lightning's own SIGTERM handler, which would stop without a checkpoint
        self._previous = {s: signal.signal(s, self._flag) for s in (signal.SIGINT, signal.SIGTERM)}

    @property
    def state_key(self) -> str:
        # the key a plain ModelCheckpoint("last") had: checkpoints written before this class resume as before
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_handlers()
        if self.signum is not None:  # the signal came in the very last step: training is over
            raise Interrupted(self.signum, trainer.global_step, trainer.current_epoch)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        super().on_exception(trainer, pl_module, exception)

    def _stop_if_signalled(self, trainer: pl.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        if not trainer.fast_dev_run:
            trainer.save_checkpoint(self.path, weights_only=False)
        self._restore_handlers()
        raise Interrupted(self.signum or signal.SIGTERM, trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        done = batch_idx + 1
        every = trainer.val_check_batch
        validation_next = isinstance(every, (int, float)) and every != float("inf") and done % int(every) == 0
        if done % trainer.accumulate_grad_batches or done >= trainer.num_training_batches or validation_next:
            return  # mid-accumulation, or validation / the epoch's end comes first: stop after it
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._stop_if_signalled(trainer)


def _clip_hint(pl_module: pl.LightningModule) -> str:
    # a model trained with truncated BPTT optimises manually and clips itself (model.clip_grad_norm)
    return getattr(pl_module, "clip_hint", "set trainer.gradient_clip_val")


def _nonfinite_name(t: torch.Tensor) -> str:
    return "nan" if torch.isnan(t).any() else "inf"


class MovingAverage(EMAWeightAveraging):
    """``ema=<decay>``: an exponential moving average of the weights, updated after every optimiser step.

    Lightning's callback swaps the average in for each validation, so early stopping and
    the best checkpoint judge the average, and every checkpoint's ``state_dict`` holds
    the average (the trained weights ride along as ``current_model_state`` so that a
    resumed run continues from them). One change: Lightning's callback reloads those
    trained weights whenever a checkpoint is loaded, which would make ``trainer.test``
    of the best checkpoint test the weights that were not validated; here they are
    reloaded only to go on training, and a test reads the average it was chosen by.
    """

    def __init__(self, decay: float):
        super().__init__(decay=decay)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
