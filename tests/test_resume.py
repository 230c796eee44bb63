"""A run killed mid-training and resumed with ckpt_path=last ends bit-identical to one never interrupted."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import child_env, run_cmd

RUN = ["task=peptides", "hidden_size=16", "trainer.max_epochs=4", "patience=null",
       "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "trainer.limit_test_batches=1"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["ema=0.9"]], ids=["plain", "moving-average"])
def test_killed_run_resumed_from_last_matches_the_uninterrupted_run(tmp_path, extra):
    module = [sys.executable, "-m", "toolkit.train"]
    args = [*RUN, *extra]
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    a = run_cmd([*module, *args, f"hydra.run.dir={run_a}"], cwd=tmp_path)
    assert a.returncode == 0, a.explain()
    seconds = float(re.search(r"training 4 epochs .*· ([\d.]+)s", a.stdout).group(1))
    epoch = seconds / 4

    last_b = run_b / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([*module, *args, f"hydra.run.dir={run_b}"], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last_b.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.4 * epoch)  # into the second epoch's training, well before its end
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run B finished before the kill: make its epochs longer"
    killed_at = load(last_b)
    assert killed_at["epoch"] == 0, "the kill did not land in the second epoch: make its epochs longer"
    assert not (run_b / "summary.txt").exists()

    b = run_cmd([*module, *args, "ckpt_path=last", f"hydra.run.dir={run_b}"], cwd=tmp_path)
    assert b.returncode == 0, b.explain()
    assert f"resumed  from {last_b}" in b.stdout
    assert "training 4 epochs" in b.stdout

    final_a, final_b = load(run_a / "checkpoints" / "last.ckpt"), load(last_b)
    assert (final_a["epoch"], final_a["global_step"]) == (final_b["epoch"], final_b["global_step"])
    assert final_a["global_step"] > 0
    assert_same_tensors(final_a["state_dict"], final_b["state_dict"], "weights")
    if extra:  # the state_dict is the average; the weights being trained resume too
        assert_same_tensors(final_a["current_model_state"], final_b["current_model_state"], "trained weights")
        assert not torch.equal(final_b["state_dict"]["out.weight"], final_b["current_model_state"]["out.weight"])
    for sa, sb in zip(final_a["optimizer_states"][0]["state"].values(),
                      final_b["optimizer_states"][0]["state"].values()):
        assert_same_tensors(sa, sb, "Adam state")
    assert not torch.equal(killed_at["state_dict"]["out.weight"], final_b["state_dict"]["out.weight"])
