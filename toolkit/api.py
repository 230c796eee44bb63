"""Use a trained model from Python: ``toolkit.load(path)`` and the head's batch methods.

This is the one inference path: ``rtk predict`` / ``generate`` / ``score``, the
stream (``toolkit.stream``) and the export (``toolkit.export``) all go through it.

    >>> import toolkit
    >>> model = toolkit.load("runs/ner/…/checkpoints/best.ckpt")   # eval mode, CPU
    >>> model.predict(["Harry Potter visited London ."])
    [[('Harry', 'B-person'), ('Potter', 'I-person'), ('visited', 'O'), ('London', 'B-geo-loc'), ('.', 'O')]]

The batch methods of each head are in ``toolkit.inference`` (docs/python.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.checkpoints import load_task
from toolkit.heads import HEADS
from toolkit.inference import Model
from toolkit.tasks.base import SequenceTask


def load(path: str | Path, map_location: str | torch.device | None = None, expect: str | None = None) -> "Model":
    """A trained model from a checkpoint, in eval mode, on ``map_location`` (default CPU).

    Loading is safe as ``rtk predict``'s: tensors and plain data only (``weights_only``),
    only toolkit heads and registered cells, never a ``_target_``; a bad file raises
    :class:`toolkit.errors.CheckpointError` with one sentence. ``expect`` names the head
    the caller needs (``"language_model"`` …) and refuses another.
    """
    task = load_task(path, expect)
    if map_location is not None:
        task = task.to(map_location)
    return wrap(task)


def wrap(task: SequenceTask) -> "Model":
    """The batch-method object of an already built task (e.g. one just trained): the head's
    declared ``api`` class, or the plain :class:`~toolkit.inference.Model` (the head's ``predict``
    hook per text) for a head that declares none."""
    return (HEADS[task.hparams.head].api or Model)(task)
