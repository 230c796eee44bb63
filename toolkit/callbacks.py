"""Callbacks and the checkpoint writer the training app always uses."""

from __future__ import annotations

import io
import math
import os
import uuid
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from toolkit.errors import CheckpointError, NumericError


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


def _clip_hint(pl_module: pl.LightningModule) -> str:
    # a model trained with truncated BPTT optimises manually and clips itself (model.clip_grad_norm)
    return getattr(pl_module, "clip_hint", "set trainer.gradient_clip_val")


def _nonfinite_name(t: torch.Tensor) -> str:
    return "nan" if torch.isnan(t).any() else "inf"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file beside it, fsync, then rename it over the old one.

    A kill or a full disk during the write leaves the previous checkpoint whole
    (Lightning's own writer stages in the system temp dir and moves the file,
    which is a copy across file systems and is not synced). A failed write is one
    CheckpointError sentence, and its temporary file is removed.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # not mkstemp: its 0600 would ignore the umask the old checkpoint was written under
            tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
            with open(tmp, "xb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)  # the rename itself survives a power cut
        except OSError as e:
            kept = "; the previous one there is unchanged" if path.exists() else ""
            raise CheckpointError(f"could not write the checkpoint {path} ({e.strerror or e}){kept}; free "
                                  "some space or set hydra.run.dir to another disk") from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)
