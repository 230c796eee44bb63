"""Checkpoint I/O and its safety rules, in one place.

- Reading (:func:`read_checkpoint`, :func:`load_task`): tensors and plain data only
  (``weights_only``, never pickled code), a known head (``toolkit.heads``), this
  toolkit's format version, no Hydra instantiation key anywhere in the
  hyper-parameters, and a cell that is installed (else the plugin to install).
- Writing (:class:`AtomicCheckpointIO`, the writer the training app gives
  Lightning): a temporary file beside the checkpoint, fsync, rename, fsync the
  folder (``toolkit.files.write_atomic``), so a kill or a full disk leaves the
  previous checkpoint whole.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from toolkit.cells import available_cells
from toolkit.data.sources import Phrases
from toolkit.errors import CheckpointError
from toolkit.files import write_atomic
from toolkit.heads import HEADS
from toolkit.tasks.base import FORMAT_VERSION, SequenceTask

_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def read_checkpoint(path: str | Path, expect: str | None = None) -> dict:
    """A checkpoint's contents, loaded as tensors and plain data only (never pickled code).

    Raises CheckpointError for a missing, truncated or foreign file, another format
    version, or (with ``expect``) a model of another head.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} is not a checkpoint this toolkit can read safely: it is not a "
                              "torch checkpoint, or unpickling it would run code") from None
    except Exception as e:  # truncated or otherwise damaged
        raise CheckpointError(f"checkpoint {path} cannot be read, it may be truncated or damaged "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    unpack_gazetteer(ckpt)
    if not hp or "head" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Recurrent Toolkit checkpoint")
    if hp.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was written with checkpoint format {hp.get('format_version')}; "
                              f"this toolkit reads format {FORMAT_VERSION}")
    if hp["head"] not in HEADS:
        raise CheckpointError(f"{path} holds a '{hp['head']}' model, which this toolkit cannot load")
    if where := _hydra_key(hp):
        raise CheckpointError(f"{path} holds a Hydra instantiation key ({where}); a checkpoint's "
                              "hyper-parameters can only rebuild toolkit heads and registered cells")
    cell = hp.get("cell")
    if not isinstance(cell, dict) or not isinstance(cell.get("name"), str):
        raise CheckpointError(f"{path} names no recurrent cell, so it is not a Recurrent Toolkit checkpoint")
    if cell["name"] not in available_cells():
        plugin = hp.get("cell_plugin") or {}
        dist = plugin.get("distribution") if isinstance(plugin, dict) else None
        install = (f"pip install '{dist}=={plugin.get('version')}'" if dist and plugin.get("version")
                   else "pip install <the plugin that provides it>")
        raise CheckpointError(f"{path} needs the cell '{cell['name']}'"
                              + (f" from the plugin {dist}" if dist else "")
                              + f", which is not installed; install it with: {install} (rtk plugins lists "
                              "the installed cells)")
    if expect is not None and hp["head"] != expect:
        raise CheckpointError(f"{path} holds a {hp['head']} model, not a {expect} model")
    return ckpt


def _hydra_key(node, where: str = "hyper_parameters") -> str | None:
    """Where ``node`` holds a key Hydra's instantiate would act on (``_target_``, …), or None."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HYDRA_KEYS:
                return f"{where}.{key}"
            if found := _hydra_key(value, f"{where}.{key}"):
                return found
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            if found := _hydra_key(value, f"{where}[{i}]"):
                return found
    return None


def load_task(path: str | Path, expect: str | None = None) -> SequenceTask:
    """Rebuild a trained task, in eval mode, from a checkpoint (see :func:`read_checkpoint`)."""
    ckpt = read_checkpoint(path, expect)
    hp = ckpt["hyper_parameters"]
    model = HEADS[hp["head"]].task(**{k: v for k, v in hp.items() if k != "head"})
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model


def _gazetteer_of(checkpoint) -> dict | None:
    hp = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    spec = hp.get("spec") if isinstance(hp, dict) else None
    gazetteer = spec.get("gazetteer") if isinstance(spec, dict) else None
    return gazetteer if isinstance(gazetteer, dict) else None


_PACKED: list = [None, None]  # the phrases dict last packed, and its packed form


def pack_gazetteer(checkpoint: dict) -> dict:
    """The checkpoint to write, its tagger's gazetteer (``data.gazetteer``: a dict of up to 700,000
    phrases with ``word_stats``) stored as one newline-joined string of phrases per list of type ids,
    ``{"packed": {"0 5": "london\nparis", …}}``: pickling a few strings instead of a million small
    objects makes each save about a second faster. The checkpoint given is not changed."""
    gazetteer = _gazetteer_of(checkpoint)
    if gazetteer is None or not isinstance(gazetteer.get("phrases"), dict):
        return checkpoint
    phrases = gazetteer["phrases"]
    if _PACKED[0] is not phrases:  # a run saves the same gazetteer every epoch: group it once
        groups: dict[str, list[str]] = {}
        for phrase, ids in phrases.items():
            groups.setdefault(" ".join(map(str, ids)), []).append(phrase)
        _PACKED[:] = [phrases, {ids: "\n".join(group) for ids, group in groups.items()}]
    packed = {k: v for k, v in gazetteer.items() if k != "phrases"} | {"packed": _PACKED[1]}
    hp = checkpoint["hyper_parameters"]
    return checkpoint | {"hyper_parameters": hp | {"spec": hp["spec"] | {"gazetteer": packed}}}


def unpack_gazetteer(checkpoint) -> None:
    """Undo :func:`pack_gazetteer` in place: ``{"packed": …}`` becomes ``{"phrases": {phrase: [ids]}}``."""
    gazetteer = _gazetteer_of(checkpoint)
    if gazetteer is None or not isinstance(gazetteer.get("packed"), dict):
        return
    phrases = Phrases()
    for ids, joined in gazetteer.pop("packed").items():
        kinds = [int(i) for i in ids.split()]
        for phrase in joined.split("\n"):
            phrases[phrase] = kinds
    gazetteer["phrases"] = phrases


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint through :func:`toolkit.files.write_atomic`.

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
        torch.save(pack_gazetteer(checkpoint), buffer)

        def write(tmp: Path) -> None:
            # not mkstemp: its 0600 would ignore the umask the old checkpoint was written under
            with open(tmp, "xb") as f:
                f.write(buffer.getbuffer())

        try:
            write_atomic(path, write)
        except OSError as e:
            kept = "; the previous one there is unchanged" if path.exists() else ""
            raise CheckpointError(f"could not write the checkpoint {path} ({e.strerror or e}){kept}; free "
                                  "some space or set hydra.run.dir to another disk") from None

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        """Lightning's reading (resume, ``trainer.test(ckpt_path=…)``), the gazetteer unpacked."""
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        unpack_gazetteer(checkpoint)
        return checkpoint
