"""Config checks that run before anything is built, and config nodes for plugin cells.

As in torchtune: every problem found is reported at once, one sentence each,
naming the key and the value.
"""

from __future__ import annotations

import difflib
import inspect

from omegaconf import DictConfig, OmegaConf

from toolkit.cells import available_cells, build_cell, load_cell_class
from toolkit.errors import CellError, ConfigError


def register_plugin_cells() -> None:
    """Give every registered cell without its own conf/cell/<name>.yaml a config node.

    Reads entry-point metadata only, so ``cell=<plugin name>`` works in Hydra as
    soon as the plugin is pip-installed, with no change in core.
    """
    from importlib.resources import files

    from hydra.core.config_store import ConfigStore

    shipped = {p.name.removesuffix(".yaml") for p in files("toolkit.conf").joinpath("cell").iterdir()}
    cs = ConfigStore.instance()
    for name in available_cells():
        if name not in shipped:
            cs.store(group="cell", name=name, node={"name": name, "backend": "auto"})


def _positive_int(cfg: DictConfig, key: str, errors: list[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errors.append(f"{key}={value!r} must be a whole number of at least 1")


_TRAINER_INTS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "log_every_n_steps",
                 "accumulate_grad_batches", "num_sanity_val_steps", "check_val_every_n_epoch")
_TRAINER_NUMBERS = ("gradient_clip_val", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                    "limit_predict_batches", "val_check_interval")


def _trainer_keys(errors: list[str], trainer: dict) -> None:
    from pytorch_lightning import Trainer

    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    reserved = {"logger", "callbacks", "default_root_dir", "enable_checkpointing", "use_distributed_sampler",
                "plugins"}
    for key in trainer:
        if key in reserved:
            errors.append(f"trainer.{key} is set by the toolkit; use logger=… or the run dir instead")
        elif key not in accepted:
            hint = difflib.get_close_matches(key, accepted, n=1)
            errors.append(f"trainer.{key} is not a Lightning Trainer argument"
                          + (f" (did you mean trainer.{hint[0]}?)" if hint else ""))
        elif trainer[key] is not None and not isinstance(trainer[key], bool) and (
                key in _TRAINER_INTS and not isinstance(trainer[key], int)
                or key in _TRAINER_NUMBERS and not isinstance(trainer[key], (int, float))):
            # Lightning would only fail mid-run (an assertion deep in its loops)
            kind = "a whole number" if key in _TRAINER_INTS else "a number"
            errors.append(f"trainer.{key}={trainer[key]!r} must be {kind}")


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem in ``cfg`` (nothing is built yet)."""
    from toolkit.tasks import HEADS

    errors: list[str] = []
    for key in ("depth", "hidden_size"):
        _positive_int(cfg, key, errors)
    if cfg.direction not in ("uni", "bi"):
        errors.append(f"direction={cfg.direction!r} must be 'uni' or 'bi'")
    elif cfg.direction == "bi" and cfg.task.get("causal", False):
        errors.append(f"direction=bi with task={cfg.task.name}: a language model must not see the "
                      "tokens it predicts, so it can only be unidirectional (direction=uni)")
    if cfg.task.get("head") not in HEADS:
        errors.append(f"task.head={cfg.task.get('head')!r} is not one of: {', '.join(HEADS)}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        errors.append(f"seed={cfg.seed!r} must be a whole number")
    if cfg.patience is not None and (not isinstance(cfg.patience, int) or cfg.patience < 1):
        errors.append(f"patience={cfg.patience!r} must be a whole number of at least 1, or null")
    diagnose = cfg.get("diagnose", False)
    if not isinstance(diagnose, bool):
        errors.append(f"diagnose={diagnose!r} must be true or false")
    elif diagnose and cfg.task.get("head") in HEADS:
        from toolkit.diagnose import head_problem

        if problem := head_problem(cfg.task.head):
            errors.append(problem)
    dropout = cfg.model.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        errors.append(f"model.dropout={dropout!r} must be a number in [0, 1)")
    lr = cfg.model.get("lr", 1e-3)
    if not isinstance(lr, (int, float)) or lr <= 0:
        errors.append(f"model.lr={lr!r} must be a positive number")
    _trainer_keys(errors, cfg.trainer)
    if cfg.trainer.get("limit_val_batches") == 0 and cfg.patience is not None:
        errors.append(f"trainer.limit_val_batches=0 leaves no {cfg.task.get('monitor')} for early stopping "
                      f"(patience={cfg.patience}); set patience=null as well")
    tbptt = cfg.model.get("tbptt_steps")
    if tbptt is not None:
        # truncated BPTT optimises by hand (the state is carried between batches), and
        # Lightning neither clips nor accumulates for a manually optimised model
        if cfg.trainer.get("gradient_clip_val") is not None:
            errors.append(f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val!r} does not apply with "
                          f"model.tbptt_steps={tbptt!r} (truncated BPTT optimises manually, where Lightning "
                          "does not clip); set trainer.gradient_clip_val=null and model.clip_grad_norm=<max norm> "
                          "instead")
        if (cfg.trainer.get("accumulate_grad_batches") or 1) != 1:
            errors.append(f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches!r} does not "
                          f"apply with model.tbptt_steps={tbptt!r} (truncated BPTT optimises manually); "
                          "raise data.batch_size instead")
    try:
        cls = load_cell_class(cfg.cell.name)
        hparams = {k: v for k, v in cfg.cell.items() if k not in ("name", "backend")}
        cls.validate_hparams(hparams, name=cfg.cell.name)
        build_cell(cfg.cell.name, 2, 2, **hparams)  # a tiny one: catches bad values, not just bad names
    except CellError as e:
        errors.append(str(e))
    if cfg.cell.get("backend", "auto") not in ("auto", "native", "sequence", "loop"):
        errors.append(f"cell.backend={cfg.cell.backend!r} is not one of: auto, native, sequence, loop")
    if errors:
        raise ConfigError("; ".join(errors))
