"""Config checks that run before anything is built, and config nodes for plugin cells.

As in torchtune: every problem found is reported at once, one sentence each,
naming the key and the value.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from collections.abc import Mapping
from importlib.resources import files

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Trainer

from toolkit.cells import available_cells, build_cell, cell_hparams, load_cell_class
from toolkit.errors import CellError, ConfigError, whole_number_problem
from toolkit.heads import HEADS, diagnose_problem
from toolkit.layers import BACKENDS
from toolkit.tasks.base import SequenceTask


def register_plugin_cells() -> None:
    """Give every registered cell without its own conf/cell/<name>.yaml a config node.

    The node holds the hparam defaults of the cell's ``__init__`` (its signature is the
    one home of them), so ``cell=<plugin name> cell.<hparam>=…`` works in Hydra, and
    ``--cfg job`` shows them, as soon as the plugin is pip-installed, with no change in
    core. A plugin that fails to load gets a bare node; ``cell=<its name>`` then
    reports why in one sentence (``validate``).
    """
    shipped = {p.name.removesuffix(".yaml") for p in files("toolkit.conf").joinpath("cell").iterdir()}
    cs = ConfigStore.instance()
    for name in available_cells():
        if name in shipped:
            continue
        node = {"name": name, "backend": "auto"}
        try:
            node |= load_cell_class(name).hparam_defaults()
        except CellError:
            pass
        cs.store(group="cell", name=name, node=node)


_TRAINER_INTS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "log_every_n_steps",
                 "accumulate_grad_batches", "num_sanity_val_steps", "check_val_every_n_epoch")
_TRAINER_NUMBERS = ("gradient_clip_val", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                    "limit_predict_batches", "val_check_interval")


def _trainer_keys(errors: list[str], trainer: dict) -> None:
    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    reserved = {"logger", "callbacks", "default_root_dir", "use_distributed_sampler", "plugins"}
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
        elif problem := _trainer_value_problem(key, trainer[key]):
            errors.append(problem)


# Lightning's own spellings (lightning_fabric's _PRECISION_INPUT); anything else fails deep in its connector.
_PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
               "transformer-engine", "transformer-engine-float16")


def _trainer_value_problem(key: str, value) -> str | None:
    """Why a trainer value of the right type would still fail or silently do something else in Lightning."""
    if value is None or isinstance(value, bool) and key not in ("fast_dev_run", "enable_checkpointing",
                                                                "deterministic"):
        return None
    if key.startswith("limit_") and key.endswith("_batches"):
        if value < 0 or isinstance(value, float) and value > 1:
            return f"trainer.{key}={value!r} must be a fraction in [0, 1] or a whole number of batches"
        if key == "limit_train_batches" and value == 0:
            return "trainer.limit_train_batches=0 would train nothing; give a fraction (0.1) or a number of batches"
    elif key == "val_check_interval" and (value <= 0 or isinstance(value, float) and value > 1):
        return (f"trainer.val_check_interval={value!r} must be a fraction of an epoch in (0, 1] or a whole number "
                "of training batches")
    elif key in ("log_every_n_steps", "accumulate_grad_batches", "max_epochs", "check_val_every_n_epoch") and (
            value < (1 if key != "max_epochs" else -1) or key == "max_epochs" and value == 0):
        return f"trainer.{key}={value!r} must be a whole number of at least 1" + (
            " (or -1: no limit)" if key == "max_epochs" else "")
    elif key == "fast_dev_run" and not isinstance(value, bool) and (not isinstance(value, int) or value < 0):
        return f"trainer.fast_dev_run={value!r} must be true, false or a number of batches"
    elif key in ("enable_checkpointing", "deterministic") and not isinstance(value, bool) and not (
            key == "deterministic" and value == "warn"):
        return f"trainer.{key}={value!r} must be true or false"
    elif key == "precision" and str(value) not in _PRECISIONS:
        return f"trainer.precision={value!r} is not one of: {', '.join(_PRECISIONS)}"
    elif key == "max_time" and not _is_duration(value):
        return (f"trainer.max_time={value!r} must be DD:HH:MM:SS (e.g. 00:00:10:00 for ten minutes) or "
                "{days: …, hours: …, minutes: …, seconds: …}")
    return None


def _is_duration(value) -> bool:
    if isinstance(value, str):
        parts = value.split(":")
        return len(parts) == 4 and all(p.isdigit() for p in parts)
    if isinstance(value, Mapping):
        return bool(value) and all(k in ("days", "hours", "minutes", "seconds") and isinstance(v, (int, float))
                                   and not isinstance(v, bool) for k, v in value.items())
    return False


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem in ``cfg`` (nothing is built yet)."""

    errors: list[str] = []
    head = HEADS.get(cfg.task.get("head"))
    # the head's hyper-parameters (depth, direction, hidden_size, model.*), checked by the head itself
    # (an unknown head: the keys every head shares)
    hp = {"depth": cfg.depth, "direction": cfg.direction, "hidden_size": cfg.hidden_size,
          "task_name": cfg.task.get("name", ""), **OmegaConf.to_container(cfg.model, resolve=True)}
    errors += (head.task if head else SequenceTask).problems(hp)
    if head is None:
        errors.append(f"task.head={cfg.task.get('head')!r} is not one of: {', '.join(HEADS)}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        errors.append(f"seed={cfg.seed!r} must be a whole number")
    if problem := whole_number_problem("patience", cfg.patience, null=True):
        errors.append(problem)
    ema = cfg.get("ema")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 < ema < 1):
        errors.append(f"ema={ema!r} must be a decay between 0 and 1 (e.g. 0.99: the average of about the last "
                      "100 steps), or null for no moving average")
    diagnose = cfg.get("diagnose", False)
    if not isinstance(diagnose, bool):
        errors.append(f"diagnose={diagnose!r} must be true or false")
    elif diagnose and head is not None and (problem := diagnose_problem(head.name)):
        errors.append(problem)
    if cfg.data.get("target") == "regression" and cfg.task.get("monitor") in ("val_acc", "val_f1"):
        errors.append(f"data.target=regression with task.monitor={cfg.task.monitor}: a regression reports "
                      "val_mse and val_mae, not accuracy; use task=series_regression")
    gazetteer_dim = cfg.model.get("gazetteer_dim")
    if gazetteer_dim is not None and cfg.data.get("gazetteer") is None:
        # the ner default maps its flags: turning the gazetteers off asks for both overrides
        errors.append(f"model.gazetteer_dim={gazetteer_dim!r} needs data.gazetteer (the flags it maps): set "
                      "data.gazetteer=[…] or model.gazetteer_dim=null")
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
        hparams = cell_hparams(cfg.cell)
        cls.validate_hparams(hparams, name=cfg.cell.name)
        build_cell(cfg.cell.name, 2, 2, **hparams)  # a tiny one: catches bad values, not just bad names
    except CellError as e:
        errors.append(str(e))
    if cfg.cell.get("backend", "auto") not in BACKENDS:
        errors.append(f"cell.backend={cfg.cell.backend!r} is not one of: {', '.join(BACKENDS)}")
    if errors:
        raise ConfigError("; ".join(errors))


# logger=<name> -> (the module it imports, the extra that installs it)
LOGGER_PACKAGES = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}


def check_environment(cfg: DictConfig) -> None:
    """Raise one ConfigError when this machine lacks what ``cfg`` asks for (a package, a GPU).

    Runs right after :func:`validate`, before any data is read, so a missing extra costs nothing.
    """
    errors: list[str] = []
    name = cfg.logger.get("name")
    if name in LOGGER_PACKAGES:
        module, extra = LOGGER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            errors.append(f"logger={name} needs the {module} package, which is not installed: "
                          f"pip install 'recurrent-toolkit[{extra}]'")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    precision = str(cfg.trainer.get("precision", "32"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        cpu = "trainer=ddp_cpu" if str(cfg.trainer.get("strategy", "auto")).startswith("ddp") else "trainer=cpu"
        errors.append(f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none on this machine "
                      f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}); use {cpu}")
    elif precision in ("16", "16-mixed") and (accelerator == "cpu" or not torch.cuda.is_available()):
        # Lightning would silently train in bf16 instead
        errors.append(f"trainer.precision={precision}: float16 mixed precision needs a CUDA GPU; on CPU use "
                      "trainer.precision=bf16-mixed (or 32)")
    if errors:
        raise ConfigError("; ".join(errors))


_SPLIT_OF = {"limit_train_batches": "train", "limit_val_batches": "validation", "limit_test_batches": "test"}


def check_batches(trainer: DictConfig, batches: dict[str, int]) -> None:
    """Raise one ConfigError for ``trainer.*`` batch counts that do not fit the data's ``batches`` per split.

    Only knowable once the data is read; Lightning would stop at the same point with a traceback.
    """
    errors = []
    for key, split in _SPLIT_OF.items():
        limit, n = trainer.get(key), batches.get(split)
        if isinstance(limit, float) and not isinstance(limit, bool) and 0 < limit < 1 and n and int(n * limit) < 1:
            errors.append(f"trainer.{key}={limit} of the {split} split's {n} batch{'es' if n != 1 else ''} is less "
                          f"than one batch; give a larger fraction or a number of batches")
    interval, n = trainer.get("val_check_interval"), batches.get("train")
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool) and n:
        n = min(n, limit)
    elif isinstance(limit, float) and n:
        n = int(n * limit)
    if isinstance(interval, int) and not isinstance(interval, bool) and n and interval > n:
        errors.append(f"trainer.val_check_interval={interval} is more than the {n} training batches of an epoch; "
                      "give at most that many, or a fraction of an epoch")
    if errors:
        raise ConfigError("; ".join(errors))
