"""Shared helpers: offline environment, the real config composed in-process, and `rtk` as a subprocess.

The HF datasets cache and the toolkit's source cache stay the user's defaults,
so the named sources are not regenerated every session; every training run the
tests start writes into a pytest tmp_path (``hydra.run.dir=…``), never the repo.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RTK = str(VENV_BIN / "rtk") if (VENV_BIN / "rtk").exists() else "rtk"

# Small enough to finish in seconds on 2 CPU cores, big enough to train, validate and test.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",  # 3 batches: log every step so metrics.csv has train_loss
    "hidden_size=16",
]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (f"command: {' '.join(self.args)}\nexit: {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("RTK_DEBUG", None)
    env["PYTHONUNBUFFERED"] = "1"
    # One intra-op thread per child: on a shared 2-core machine torch's two spinning
    # OpenMP threads made a tiny run ~10x slower (7.3 s vs 0.8 s of training).
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cmd(args: list[str], *, timeout: float = 300, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Result:
    """Run a command (``rtk …`` or ``python -m …``) and capture its output; ``env`` adds variables."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=child_env(env))
    return Result(list(args), done.returncode, done.stdout, done.stderr)


def rtk_cmd(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> Result:
    return run_cmd([RTK, *args], timeout=timeout, cwd=cwd, env=env)


@pytest.fixture
def rtk(tmp_path_factory):
    """``rtk(*args)`` runs the installed ``rtk`` command from a scratch working directory."""
    cwd = tmp_path_factory.mktemp("cwd")

    def call(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Result:
        return run_cmd([RTK, *args], timeout=timeout, cwd=cwd, env=env)

    return call


@pytest.fixture
def train_module(tmp_path_factory):
    """``train_module(*overrides)`` runs ``python -m toolkit.train`` (the same Hydra app)."""
    cwd = tmp_path_factory.mktemp("cwd")

    def call(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Result:
        return run_cmd([sys.executable, "-m", "toolkit.train", *args], timeout=timeout, cwd=cwd, env=env)

    return call


def compose_train(overrides: list[str] | None = None):
    """The real ``train`` config, composed with Hydra's compose API (no run, no run dir)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from toolkit.config import register_plugin_cells

    register_plugin_cells()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides or []), return_hydra_config=True)


@pytest.fixture
def compose():
    return compose_train


def run_app_in_process(monkeypatch, argv: list[str]) -> int:
    """``rtk train <argv>`` in this process (the real Hydra app, via ``toolkit.train.run``); its exit status.

    Hydra's job logging binds handlers to the calling test's captured streams, so the
    handlers the run added are removed again afterwards.
    """
    from toolkit.train import run

    monkeypatch.setattr(sys, "argv", ["toolkit.train", *argv])
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in logging.root.manager.loggerDict]
    before = {lg: list(lg.handlers) for lg in loggers}
    code = 0
    try:
        run()
    except SystemExit as e:
        code = e.code
    finally:
        for lg in [logging.getLogger()] + [logging.getLogger(n) for n in logging.root.manager.loggerDict]:
            for h in [h for h in lg.handlers if h not in before.get(lg, [])]:
                lg.removeHandler(h)
                h.close()
    return code
