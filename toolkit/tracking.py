"""Experiment tracking with Weights & Biases (``logger=wandb``).

Runs offline whenever no API key is available, so nothing needs an account;
``wandb sync <run dir>/wandb/offline-run-*`` uploads such a run later.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger

from toolkit.errors import ConfigError


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None  # where `wandb login` keeps it
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def sweep_group() -> str | None:
    """Jobs of one Hydra multirun share a W&B group named after the sweep directory."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"sweep-{Path(hc.sweep.dir).name}"
    return None


def wandb_logger(cfg: DictConfig, run_dir: Path, *, project: str, entity: str | None = None,
                 group: str | None = None, tags: list | None = None, offline: bool | None = None,
                 log_model: bool = False):
    try:
        import wandb  # noqa: F401  (an optional extra: only to say how to install it)
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package: pip install 'recurrent-toolkit[wandb]'") from None

    if offline is None:
        offline = os.environ.get("WANDB_MODE") == "offline" or not _has_api_key()
    return WandbLogger(
        project=project, entity=entity, group=group or sweep_group(), tags=list(tags or []),
        offline=bool(offline), save_dir=str(run_dir), log_model=log_model and not offline,
    )  # the train app logs the resolved config through log_hyperparams
