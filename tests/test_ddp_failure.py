"""A DDP rank that dies takes the others down with it, fast: no run is left hanging."""

import os
import signal
import subprocess
import time

import pytest

from conftest import RTK, child_env

pytestmark = pytest.mark.slow

# Test-only failure injection: a sitecustomize on PYTHONPATH, so no hook lives in the toolkit.
INJECT = '''
import os
rank = os.environ.get("RTK_TEST_FAIL_RANK")
if rank is not None:
    import torch.distributed as dist
    import toolkit.tasks.classification as c
    step = c.ClassificationTask.training_step
    def failing(self, batch, i):
        if i == 2 and dist.is_initialized() and dist.get_rank() == int(rank):
            raise RuntimeError(f"injected failure in rank {rank}")
        return step(self, batch, i)
    c.ClassificationTask.training_step = failing
'''


@pytest.mark.parametrize("rank", [1, 0])
def test_when_one_ddp_rank_raises_every_rank_exits_non_zero(tmp_path, rank):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    env = child_env({"RTK_TEST_FAIL_RANK": str(rank), "PYTHONPATH": str(tmp_path / "inject")})
    args = [RTK, "train", "task=peptides", "hidden_size=16", "trainer=ddp_cpu", "trainer.max_epochs=1",
            "trainer.limit_train_batches=10", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a DDP run with a failed rank hung for 180 s")
    assert proc.returncode != 0
    assert f"injected failure in rank {rank}" in out
    assert time.monotonic() - start < 180
    survivors = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True).stdout
    assert not survivors.strip(), f"ranks still running after the failure: {survivors}"
    assert not (tmp_path / "run" / "summary.txt").exists()
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
