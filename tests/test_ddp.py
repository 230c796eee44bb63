"""DDP on CPU (trainer=ddp_cpu: 2 processes over gloo): the code path `trainer=ddp` takes on GPUs.

Run through the real `rtk train`, because Lightning starts the second rank by
re-running the command line: a dispatcher that mangled sys.argv would hang here.
"""

import re

import pytest

pytestmark = pytest.mark.slow

PEPTIDES = ["task=peptides", "hidden_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def _test_metrics(stdout: str) -> str:
    line = next(l for l in stdout.splitlines() if l.startswith("test "))
    return re.sub(r"loss \S+\s+", "", line)  # the loss is a mean of per-rank means; counts are exact


def test_rtk_train_ddp_cpu_trains_and_only_rank_zero_writes(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", *PEPTIDES, "trainer=ddp_cpu", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", f"hydra.run.dir={run}", timeout=240)
    assert r.returncode == 0, r.explain()
    assert r.stdout.count("Recurrent Toolkit · peptides") == 1, "the summary must be printed once, by rank 0"
    for name in ("config.yaml", "metrics.csv", "summary.txt", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).exists(), name
    assert not list(run.glob("*ddp_process*")), "a non-zero rank wrote its own log file"


def test_ddp_evaluation_counts_every_example_once(rtk, tmp_path):
    """The same weights score the same on the test split with 1 process and with 2."""
    trained = tmp_path / "trained"
    r = rtk("train", *PEPTIDES, "trainer.limit_train_batches=30", f"hydra.run.dir={trained}", timeout=240)
    assert r.returncode == 0, r.explain()
    ckpt = f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"
    single = rtk("train", *PEPTIDES, ckpt, f"hydra.run.dir={tmp_path / 'single'}", timeout=240)
    ddp = rtk("train", *PEPTIDES, ckpt, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'ddp'}", timeout=240)
    assert single.returncode == 0 and ddp.returncode == 0, single.explain() + ddp.explain()
    assert _test_metrics(single.stdout) == _test_metrics(ddp.stdout)
    assert "acc 0.5000" not in _test_metrics(single.stdout), "the checkpoint should have learnt something"


def test_ddp_inside_a_multirun_sweep_runs_every_job(rtk, tmp_path):
    sweep = tmp_path / "sweep"
    r = rtk("train", "-m", *PEPTIDES, "trainer=ddp_cpu", "seed=1,2", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", f"hydra.sweep.dir={sweep}", timeout=300)
    assert r.returncode == 0, r.explain()
    for job in ("0", "1"):
        assert (sweep / job / "summary.txt").is_file(), f"job {job} left no summary"
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def test_truncated_bptt_language_model_trains_under_ddp(rtk, tmp_path):
    """word_lm optimises manually and carries state across batches: each rank takes its own rows of the stream."""
    run = tmp_path / "run"
    r = rtk("train", "task=word_lm", "hidden_size=16", "trainer=ddp_cpu", "trainer.max_epochs=1",
            "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false", "model.samples=1", f"hydra.run.dir={run}", timeout=300)
    assert r.returncode == 0, r.explain()
    assert r.stdout.count("Recurrent Toolkit · word_lm") == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "perplexity" in (run / "summary.txt").read_text()


def test_a_finished_run_releases_its_process_group(monkeypatch):
    """Left to interpreter shutdown, gloo's threads can abort a rank that finished its work
    ("terminate called without an active exception"); `rtk train` destroys the group itself."""
    import socket  # only this test opens a process group in the test process

    import torch.distributed as dist

    from toolkit.train import close_process_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        close_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    close_process_group()  # and nothing to do without a group
