"""SIGKILL at chosen points of a run, then `ckpt_path=last`: the end is bit-identical to a run never killed.

The kill is injected by a test-only sitecustomize on PYTHONPATH (no hook lives in
the toolkit); tests/test_resume.py covers a kill mid-epoch by the clock.
"""

from __future__ import annotations

import signal

import pytest

from conftest import run_cmd
from test_resume import assert_same_tensors, load

pytestmark = pytest.mark.slow

RUN = ["task=peptides", "hidden_size=16", "trainer.max_epochs=3", "patience=null", "trainer.limit_train_batches=8",
       "trainer.enable_progress_bar=false", "trainer.limit_val_batches=3", "trainer.limit_test_batches=1"]

INJECT = '''
import os, signal
point = os.environ.get("RTK_TEST_KILL_AT")
if point:
    import toolkit.tasks.classification as c

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "validation":  # second validation batch of the second epoch
        val = c.ClassificationTask.validation_step
        def validation_step(self, batch, i):
            if self.current_epoch == 1 and i == 1:
                die()
            return val(self, batch, i)
        c.ClassificationTask.validation_step = validation_step
    elif point == "checkpoint":  # half-way through writing the second epoch's last.ckpt, wherever it is written
        import builtins
        real_open = builtins.open
        seen = []

        class HalfThenDie:
            def __init__(self, f):
                self.f = f
            def write(self, data):
                self.f.write(bytes(data)[: len(data) // 2])
                self.f.flush()
                os.fsync(self.f.fileno())
                die()
            def __getattr__(self, name):
                return getattr(self.f, name)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

        def open_(file, mode="r", *a, **kw):
            f = real_open(file, mode, *a, **kw)
            if "last.ckpt" in str(file) and any(m in mode for m in "wxa"):
                seen.append(file)
                if len(seen) == 2:
                    return HalfThenDie(f)
            return f
        builtins.open = open_
'''


@pytest.mark.parametrize("point", ["validation", "checkpoint"])
def test_killed_at_a_point_and_resumed_matches_the_uninterrupted_run(tmp_path, point):
    import sys

    module = [sys.executable, "-m", "toolkit.train"]
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    a = run_cmd([*module, *RUN, f"hydra.run.dir={run_a}"], cwd=tmp_path)
    assert a.returncode == 0, a.explain()

    killed = run_cmd([*module, *RUN, f"hydra.run.dir={run_b}"], cwd=tmp_path,
                     env={"RTK_TEST_KILL_AT": point, "PYTHONPATH": str(tmp_path / "inject")})
    assert killed.returncode == -signal.SIGKILL, killed.explain()
    last = run_b / "checkpoints" / "last.ckpt"
    assert load(last)["epoch"] == 0, f"last.ckpt must still be the intact first-epoch checkpoint ({point})"

    b = run_cmd([*module, *RUN, "ckpt_path=last", f"hydra.run.dir={run_b}"], cwd=tmp_path)
    assert b.returncode == 0, b.explain()
    final_a, final_b = load(run_a / "checkpoints" / "last.ckpt"), load(last)
    assert (final_a["epoch"], final_a["global_step"]) == (final_b["epoch"], final_b["global_step"])
    assert_same_tensors(final_a["state_dict"], final_b["state_dict"], "weights")
