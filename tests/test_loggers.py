"""`logger=tensorboard` and `logger=none` run a whole training; without the tensorboard package,
`logger=tensorboard` is one sentence."""

from __future__ import annotations

import pytest

from conftest import TINY, rtk_cmd

pytestmark = pytest.mark.slow

PEPTIDES = ["task=peptides", *TINY]


def test_tensorboard_logger_writes_every_metric_next_to_metrics_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    r = rtk_cmd("train", *PEPTIDES, "logger=tensorboard", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.explain()
    assert (run_dir / "metrics.csv").is_file(), "logger=tensorboard keeps metrics.csv too"
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss_epoch", "val_loss", "val_acc", "test_acc", "test_f1"} <= tags, tags
    assert 0 <= events.Scalars("test_acc")[-1].value <= 1


def test_no_logger_trains_tests_and_summarises_without_metric_files(tmp_path):
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", *PEPTIDES, "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.explain()
    assert "test     loss" in r.stdout and "acc" in r.stdout
    for kept in ("summary.txt", "results.json", "config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / kept).is_file(), kept
    for absent in ("metrics.csv", "hparams.yaml", "tensorboard", "curves.png"):
        assert not (run_dir / absent).exists(), absent


def test_tensorboard_logger_without_the_package_is_one_sentence(tmp_path):
    """A ``tensorboard`` that cannot be imported (first on the path) stands in for one not installed."""
    hide = tmp_path / "hide" / "tensorboard"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("tensorboard is hidden by the test")\n')
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", *PEPTIDES, "logger=tensorboard", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                env={"PYTHONPATH": str(hide.parent)})
    assert r.returncode == 2, r.explain()
    assert r.stderr.strip() == ("error: logger=tensorboard needs the tensorboard package: "
                                "pip install 'recurrent-toolkit[tensorboard]'")
    assert not run_dir.exists(), "a run that failed before training leaves no run dir"
