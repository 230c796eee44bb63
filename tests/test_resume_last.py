"""`ckpt_path=last` as docs/runs.md promises it: this run's own last.ckpt, else the newest sibling run
of the same config (passing over others), a one-sentence error when there is none, and, resuming in
the same directory, metrics.csv without the rows the interrupted run wrote after its checkpoint."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_train, rtk_cmd
from toolkit.errors import ConfigError
from toolkit.train import csv_logger, resolve_ckpt

SPEC = {"kind": "classification", "tokenizer": "chars", "normalize": "none", "vocab": ["<pad>", "<unk>", "K"],
        "labels": ["amp", "not"]}


def config(*overrides: str):
    return compose_train(["task=peptides", "ckpt_path=last", *overrides])


def write_last(run_dir: Path, cfg, mtime: float, global_step: int = 3) -> Path:
    """A real checkpoint of ``cfg``'s model, built as the train app builds it, aged to ``mtime``."""
    from toolkit.heads import HEADS

    model = HEADS[cfg.task.head].task(spec=SPEC, cell=OmegaConf.to_container(cfg.cell, resolve=True), depth=cfg.depth,
                                 direction=cfg.direction, hidden_size=cfg.hidden_size, task_name=cfg.task.name,
                                 **OmegaConf.to_container(cfg.model, resolve=True))
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "epoch": 0,
                "global_step": global_step}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_this_runs_own_last_checkpoint_comes_first(tmp_path):
    cfg = config("hidden_size=8")
    own = write_last(tmp_path / "this", cfg, mtime=1_000)
    write_last(tmp_path / "newer", cfg, mtime=2_000)
    assert resolve_ckpt(cfg, tmp_path / "this")[0] == own


def test_without_one_the_newest_sibling_run_is_taken(tmp_path):
    cfg = config("hidden_size=8")
    old = write_last(tmp_path / "a", cfg, mtime=1_000)
    new = write_last(tmp_path / "b", cfg, mtime=2_000)
    assert resolve_ckpt(cfg, tmp_path / "c")[0] == new
    os.utime(old, (3_000, 3_000))  # newest by modification time, not by name
    assert resolve_ckpt(cfg, tmp_path / "c")[0] == old


def test_a_newer_sibling_of_another_config_is_passed_over(tmp_path):
    cfg = config("hidden_size=8")
    same = write_last(tmp_path / "a", cfg, mtime=1_000)
    write_last(tmp_path / "b", config("hidden_size=16"), mtime=2_000)
    write_last(tmp_path / "c", config("hidden_size=8", "depth=2"), mtime=3_000)
    write_last(tmp_path / "d", config("hidden_size=8", "model.pooling=mean"), mtime=4_000)
    path, ckpt = resolve_ckpt(cfg, tmp_path / "new")
    assert path == same and ckpt["hyper_parameters"]["hidden_size"] == 8


def test_no_last_checkpoint_of_this_config_is_one_sentence(tmp_path):
    cfg = config("hidden_size=8")
    write_last(tmp_path / "other", config("hidden_size=16"), mtime=1_000)
    run_dir = tmp_path / "new"
    with pytest.raises(ConfigError) as e:
        resolve_ckpt(cfg, run_dir)
    assert str(e.value) == (f"ckpt_path=last: no checkpoints/last.ckpt of this config in {run_dir} or in the "
                            f"other runs under {tmp_path}; pass the checkpoint's path instead")


def test_this_runs_own_checkpoint_of_another_config_is_refused_not_skipped(tmp_path):
    write_last(tmp_path / "this", config("hidden_size=16"), mtime=2_000)
    write_last(tmp_path / "sibling", config("hidden_size=8"), mtime=1_000)
    with pytest.raises(ConfigError, match=r"ckpt_path=last: .*this/checkpoints/last.ckpt was trained with another "
                                          r"config: hidden_size=8 \(checkpoint: 16\)"):
        resolve_ckpt(config("hidden_size=8"), tmp_path / "this")


def test_rtk_train_says_there_is_no_last_checkpoint_and_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    # (TINY: were the check lost, the run it would start stays short)
    r = rtk_cmd("train", "task=peptides", "ckpt_path=last", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 2, r.explain()
    assert r.stderr.strip() == (f"error: ckpt_path=last: no checkpoints/last.ckpt of this config in {run_dir} or in "
                                f"the other runs under {run_dir.parent}; pass the checkpoint's path instead")
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- metrics.csv on resume
def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_resuming_in_the_same_dir_drops_the_rows_written_after_the_checkpoint(tmp_path):
    """Steps 0-9 were logged, the checkpoint is at step 6: rows 6-9 go, 0-5 stay, new rows follow."""
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "step", "train_loss_step"])
        out.writerows([[s // 3, s, f"0.{s}"] for s in range(10)])
    logger = csv_logger(tmp_path, resumed_step=6)
    logger.log_metrics({"epoch": 2, "train_loss_step": 0.25}, step=6)
    logger.save()
    kept = rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["train_loss_step"]) for r in kept] == [
        *((str(s), f"0.{s}") for s in range(6)), ("6", "0.25")]


def test_a_fresh_run_in_a_used_dir_starts_a_new_metrics_file(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss_step\n0,0,0.9\n")
    logger = csv_logger(tmp_path, resumed_step=None)
    logger.log_metrics({"train_loss_step": 0.5}, step=0)
    logger.save()
    assert [r["train_loss_step"] for r in rows(tmp_path / "metrics.csv")] == ["0.5"]


@pytest.mark.slow
def test_rtk_train_resumes_the_newest_sibling_of_its_config(tmp_path):
    """runs/a trained one epoch; a new run runs/c with ckpt_path=last continues it to two (in its own
    dir, so its metrics.csv holds only its own epochs). Which sibling is taken is tested above."""
    tiny = ["task=peptides", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "patience=null"]
    runs = tmp_path / "runs"
    r = rtk_cmd("train", *tiny, "hidden_size=16", "trainer.max_epochs=1", f"hydra.run.dir={runs / 'a'}", cwd=tmp_path)
    assert r.returncode == 0, r.explain()
    r = rtk_cmd("train", *tiny, "hidden_size=16", "trainer.max_epochs=2", "ckpt_path=last",
                f"hydra.run.dir={runs / 'c'}", cwd=tmp_path)
    assert r.returncode == 0, r.explain()
    assert f"resumed  from {runs / 'a' / 'checkpoints' / 'last.ckpt'}" in r.stdout
    last = torch.load(runs / "c" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 6  # a's 3 steps, then 3 more
    epochs = {row["epoch"] for row in rows(runs / "c" / "metrics.csv") if row["epoch"]}
    assert "0" not in epochs and "1" in epochs, epochs  # (the test row carries epoch 2, the end of fit)
