"""The design card's sweep runs end to end: every task x cell x depth x direction job succeeds."""

from __future__ import annotations

import itertools
import time

import pytest
import yaml

from conftest import rtk_cmd

TASKS, CELLS, DEPTHS, DIRECTIONS = ["ner", "sentiment"], ["rnn", "gru", "lstm"], [1, 2], ["uni", "bi"]


@pytest.mark.slow
def test_design_card_sweep_runs_every_job(tmp_path):
    sweep_dir = tmp_path / "multirun"
    start = time.perf_counter()
    r = rtk_cmd("train", "-m", "task=" + ",".join(TASKS), "cell=" + ",".join(CELLS),
                "depth=" + ",".join(map(str, DEPTHS)), "direction=" + ",".join(DIRECTIONS),
                "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
                f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=900)
    seconds = time.perf_counter() - start
    print(f"\nsweep of 24 jobs: {seconds:.1f} s")
    assert r.returncode == 0, r.explain()
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == [str(i) for i in range(24)]
    ran = set()
    for job in jobs:
        assert (job / "summary.txt").is_file(), f"job {job.name} left no summary\n{r.explain()}"
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        ran.add((cfg["task"]["name"], cfg["cell"]["name"], cfg["depth"], cfg["direction"]))
        summary = (job / "summary.txt").read_text()
        assert f"depth {cfg['depth']} · {cfg['direction']}directional" in summary
    assert ran == set(itertools.product(TASKS, CELLS, DEPTHS, DIRECTIONS))
    assert r.stdout.count("Recurrent Toolkit · ") == 24


GENERATIVE = ["char_lm", "word_lm", "music", "g2p"]


@pytest.mark.slow
def test_generative_sweep_runs_every_job(tmp_path):
    """The issue's grid: every generative task x cell x depth job succeeds (direction stays each task's own)."""
    sweep_dir = tmp_path / "multirun"
    r = rtk_cmd("train", "-m", "task=" + ",".join(GENERATIVE), "cell=" + ",".join(CELLS),
                "depth=" + ",".join(map(str, DEPTHS)), "trainer.fast_dev_run=true",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.explain()
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == len(GENERATIVE) * len(CELLS) * len(DEPTHS)
    ran = set()
    for job in jobs:
        assert (job / "summary.txt").is_file(), f"job {job.name} left no summary\n{r.explain()}"
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        ran.add((cfg["task"]["name"], cfg["cell"]["name"], cfg["depth"]))
    assert ran == set(itertools.product(GENERATIVE, CELLS, DEPTHS))
    # one report over jobs of different heads (perplexity next to PER / WER)
    report = rtk_cmd("report", str(sweep_dir), cwd=tmp_path)
    assert report.returncode == 0, report.explain()
    table = (sweep_dir / "report.md").read_text()
    assert "test_perplexity" in table and "test_per" in table
