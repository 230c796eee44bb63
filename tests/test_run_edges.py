"""The edges of a run (docs/errors.md, docs/runs.md): a missing extra or GPU, Ctrl-C before training,
a key checked late, a resume's warnings, a fast dev run's loggers.

Each says one sentence (or one line), exits with its own status, and leaves no run directory behind.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import TINY, run_app_in_process, run_cmd


def _one_line(err: str, prefix: str = "error: ") -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def app(monkeypatch, capsys, tmp_path):
    """``app(*argv)`` -> (exit status, stdout, stderr) of the train app run in this process, from tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RTK_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> tuple[int, str, str]:
        code = run_app_in_process(monkeypatch, list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


# ----------------------------------------------------------------------------- missing extras and hardware
@pytest.mark.parametrize("argv, config, sentence", [
    (["-m", "hydra/launcher=joblib"], "launcher/joblib",
     "hydra/launcher=joblib needs the hydra-joblib-launcher plugin, which is not installed: "
     "pip install 'recurrent-toolkit[sweeps]'"),
    (["-m", "hparams_search=optuna"], "sweeper/optuna",
     "hparams_search=optuna needs the hydra-optuna-sweeper plugin (for hydra/sweeper=optuna), which is not "
     "installed: pip install 'recurrent-toolkit[sweeps]'"),
    (["-m", "hydra/launcher=slurm"], "launcher/submitit_slurm",
     "hydra/launcher=slurm needs the hydra-submitit-launcher plugin (for hydra/launcher=submitit_slurm), which is "
     "not installed: pip install 'recurrent-toolkit[slurm]'"),
])
def test_missing_hydra_plugin_names_the_extra_to_install(app, monkeypatch, tmp_path, argv, config, sentence):
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the installed plugins register their configs once; then this one is taken away
    group, name = config.split("/")
    monkeypatch.delitem(ConfigStore.instance().repo["hydra"][group], f"{name}.yaml")
    code, out, err = app(*argv, "task=peptides", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (code, _one_line(err)) == (2, f"error: {sentence}")
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("logger, package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_logger_whose_package_is_missing_is_one_sentence_before_the_data(app, monkeypatch, tmp_path, logger, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    code, out, err = app("task=peptides", f"logger={logger}", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert (code, _one_line(err)) == (2, f"error: logger={logger} needs the {package} package, which is not "
                                         f"installed: pip install 'recurrent-toolkit[{package}]'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("trainer, instead", [("gpu", "trainer=cpu"), ("ddp", "trainer=ddp_cpu")])
def test_gpu_trainer_without_cuda_suggests_the_cpu_one(app, monkeypatch, tmp_path, trainer, instead):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = app("task=peptides", f"trainer={trainer}", f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_line(err)
    assert code == 2 and line.startswith("error: trainer.accelerator=gpu needs a CUDA GPU, and torch finds none on "
                                         f"this machine (torch {torch.__version__}, CUDA "), line
    assert line.endswith(f"; use {instead}")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checked before the data
def test_tied_weights_of_two_sizes_fail_before_the_data_and_leave_no_empty_folders(app, tmp_path):
    code, out, err = app("task=char_lm", "model.tie_weights=true", "hidden_size=16", "model.embedding_dim=8")
    assert (code, _one_line(err)) == (2, "error: model.tie_weights=true needs model.embedding_dim (8) equal to "
                                         "hidden_size (16)")
    assert "backend auto" not in err + out  # no model was built
    assert not (tmp_path / "runs").exists()  # runs/char_lm/<date> and the folders Hydra made for it


def test_a_failed_run_keeps_a_runs_folder_that_holds_other_runs(app, tmp_path):
    (tmp_path / "runs" / "char_lm" / "earlier").mkdir(parents=True)
    code, out, err = app("task=char_lm", "model.tie_weights=true")
    assert code == 2
    assert [p.name for p in (tmp_path / "runs" / "char_lm").iterdir()] == ["earlier"]


# ----------------------------------------------------------------------------- fast dev run
def test_fast_dev_run_with_wandb_says_that_it_logs_nothing(app, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = app("task=peptides", "logger=wandb", "trainer.fast_dev_run=true", "hidden_size=8",
                         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert ("trainer.fast_dev_run: Lightning turns every logger off for a fast dev run, so logger=wandb records "
            "nothing (and no metrics.csv is written)") in out + err
    assert not (run_dir / "wandb").exists() and not (run_dir / "metrics.csv").exists()
    assert "note     trainer.fast_dev_run: one batch of each split" in (run_dir / "summary.txt").read_text()


# ----------------------------------------------------------------------------- Ctrl-C outside training
SIGNAL_AT = '''
import os, signal, sys
# Ctrl-C as a terminal delivers it: a process that starts ignoring SIGINT (inherited from a parent
# that ignores it, e.g. a test worker where Lightning set SIG_IGN after a KeyboardInterrupt and
# never restored it) never gets Python's KeyboardInterrupt, and this test would train to the end
signal.signal(signal.SIGINT, signal.default_int_handler)
name, point = os.environ["RTK_TEST_SIGNAL"].split(":")
send = lambda: os.kill(os.getpid(), getattr(signal, name))
if point == "import":  # while toolkit.train imports torch
    class Hook:
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "torch":
                sys.meta_path.remove(self)
                send()
            return None
    sys.meta_path.insert(0, Hook())
elif point == "data":  # while the data module reads its source
    import toolkit.data.base as m
    setup = m.SplitDataModule.setup
    def interrupted_setup(self, stage=None):
        send()
        return setup(self, stage)
    m.SplitDataModule.setup = interrupted_setup
'''


@pytest.fixture
def signalled(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SIGNAL_AT)

    def call(when: str, *overrides: str):
        return run_cmd([sys.executable, "-m", "toolkit.train", *overrides], cwd=tmp_path,
                       env={"RTK_TEST_SIGNAL": when, "PYTHONPATH": str(tmp_path / "inject")})

    return call


def test_ctrl_c_during_start_up_is_one_line_and_no_traceback(signalled, tmp_path):
    r = signalled("SIGINT:import", "task=peptides", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 130, r.explain()
    assert r.stderr.strip() == "interrupted (SIGINT) during start-up; nothing was written", r.explain()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_before_the_first_checkpoint_removes_the_run_dir_in_one_line(signalled, tmp_path, name, status):
    run_dir = tmp_path / "run"
    r = signalled(f"{name}:data", "task=peptides", *TINY, f"hydra.run.dir={run_dir}")
    assert r.returncode == status, r.explain()
    assert _one_line(r.stderr, "interrupted") == (f"interrupted ({name}) before the first checkpoint; removed the "
                                                  f"run directory {run_dir}")
    assert not run_dir.exists()


def test_resuming_says_nothing_about_the_checkpoint_folder_being_in_use(tmp_path):
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "toolkit.train", "task=peptides", *TINY, "patience=null", f"hydra.run.dir={run_dir}"]
    first = run_cmd(base, cwd=tmp_path)
    assert first.returncode == 0, first.explain()
    again = run_cmd([*base, "trainer.max_epochs=2", "ckpt_path=last"], cwd=tmp_path)
    assert again.returncode == 0, again.explain()
    assert "training 2 epochs" in again.stdout
    assert "exists and is not empty" not in again.stderr + again.stdout, again.explain()
    assert "Traceback" not in again.stderr


# ----------------------------------------------------------------------------- batch counts that do not fit the data
@pytest.mark.parametrize("override, sentence", [
    ("trainer.limit_val_batches=0.1", "trainer.limit_val_batches=0.1 of the validation split's 2 batches is less than "
                                      "one batch; give a larger fraction or a number of batches"),
    ("trainer.val_check_interval=50", "trainer.val_check_interval=50 is more than the 2 training batches of an epoch; "
                                      "give at most that many, or a fraction of an epoch"),
])
def test_batch_counts_that_do_not_fit_the_data_are_one_sentence(app, tmp_path, override, sentence):
    table = tmp_path / "train.csv"
    table.write_text("text,label\n" + "a witty film,good\na dull mess,bad\n" * 20)  # 4 validation rows
    code, out, err = app("task=classification", f"data.train_file={table}", "data.eval_batch_size=2", *TINY,
                         override, f"hydra.run.dir={tmp_path / 'run'}")
    assert (code, _one_line(err)) == (2, f"error: {sentence}")
    assert not (tmp_path / "run").exists()
