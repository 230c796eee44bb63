"""SIGKILL, SIGINT or SIGTERM at chosen points of a run, then `ckpt_path=last`: the end is bit-identical
to a run never stopped.

SIGINT and SIGTERM let the step in progress finish, write last.ckpt there and print the exact
command that resumes; the test runs that very command. The signal or kill is injected by a
test-only sitecustomize on PYTHONPATH (no hook lives in the toolkit); tests/test_resume.py
covers a kill mid-epoch by the clock.
"""

from __future__ import annotations

import shlex
import signal
import sys

import pytest

from conftest import RTK, run_cmd
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


SIGNAL = '''
import os, signal
point = os.environ.get("RTK_TEST_SIGNAL_AT")
if point:  # NAME:hook:epoch:batch, e.g. SIGINT:training_step:1:3
    import toolkit.tasks.classification as c
    import toolkit.tasks.lm as lm

    name, hook, epoch, batch = point.split(":")
    for cls in (c.ClassificationTask, lm.LanguageModelTask):
        def wrap(real):
            def step(self, b, i):
                if (self.current_epoch, i) == (int(epoch), int(batch)) and not self.trainer.sanity_checking:
                    os.kill(os.getpid(), getattr(signal, name))
                return real(self, b, i)
            return step
        setattr(cls, hook, wrap(getattr(cls, hook)))
'''

module = [sys.executable, "-m", "toolkit.train"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The last.ckpt of RUN never stopped."""
    cwd = tmp_path_factory.mktemp("a")
    a = run_cmd([*module, *RUN, f"hydra.run.dir={cwd / 'run'}"], cwd=cwd)
    assert a.returncode == 0, a.explain()
    return load(cwd / "run" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("point", ["validation", "checkpoint"])
def test_killed_at_a_point_and_resumed_matches_the_uninterrupted_run(tmp_path, point, uninterrupted):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    run_b = tmp_path / "b"

    killed = run_cmd([*module, *RUN, f"hydra.run.dir={run_b}"], cwd=tmp_path,
                     env={"RTK_TEST_KILL_AT": point, "PYTHONPATH": str(tmp_path / "inject")})
    assert killed.returncode == -signal.SIGKILL, killed.explain()
    last = run_b / "checkpoints" / "last.ckpt"
    assert load(last)["epoch"] == 0, f"last.ckpt must still be the intact first-epoch checkpoint ({point})"

    b = run_cmd([*module, *RUN, "ckpt_path=last", f"hydra.run.dir={run_b}"], cwd=tmp_path)
    assert b.returncode == 0, b.explain()
    final_a, final_b = uninterrupted, load(last)
    assert (final_a["epoch"], final_a["global_step"]) == (final_b["epoch"], final_b["global_step"])
    assert_same_tensors(final_a["state_dict"], final_b["state_dict"], "weights")


def interrupt_and_resume(tmp_path, run: list[str], signal_at: str):
    """Run ``run`` with a signal at ``signal_at``; check the one line; run the command it gives.

    Returns (the line's step and epoch, last.ckpt as the signal left it, last.ckpt after the resume).
    """
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SIGNAL)
    run_b = tmp_path / "b"
    name = signal_at.split(":")[0]
    stopped = run_cmd([*module, *run, f"hydra.run.dir={run_b}"], cwd=tmp_path,
                      env={"RTK_TEST_SIGNAL_AT": signal_at, "PYTHONPATH": str(tmp_path / "inject")})
    assert stopped.returncode == 128 + getattr(signal, name), stopped.explain()
    assert "Traceback" not in stopped.stderr and not (run_b / "summary.txt").exists()
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, stopped.explain()
    last = run_b / "checkpoints" / "last.ckpt"
    head, command = lines[0].split("; resume with: ")
    assert head.startswith(f"interrupted ({name}) at step ") and head.endswith(f"; {last} holds the latest state")
    step, epoch = head.split(" at step ")[1].split(";")[0].replace("(epoch ", "").rstrip(")").split()
    assert command == "rtk train " + " ".join([*run, "ckpt_path=last", f"hydra.run.dir={run_b}"])
    at_signal = load(last)
    assert (at_signal["global_step"], at_signal["epoch"]) == (int(step), int(epoch))

    resumed = run_cmd([RTK, *shlex.split(command)[1:]], cwd=tmp_path)  # the very command the line gave
    assert resumed.returncode == 0, resumed.explain()
    assert f"resumed  from {last}" in resumed.stdout
    return (int(step), int(epoch)), at_signal, load(last)


# RUN: 8 training batches an epoch (steps 1-8, 9-16, 17-24), validation at each epoch's end
@pytest.mark.parametrize("signal_at, stops_at", [
    ("SIGINT:training_step:1:3", (12, 1)),  # mid-epoch: the step finishes, last.ckpt is written there
    ("SIGTERM:training_step:1:3", (12, 1)),
    ("SIGINT:training_step:1:7", (16, 1)),  # the epoch's last batch: after its validation, at the epoch's end
    ("SIGTERM:validation_step:1:1", (16, 1)),  # during validation: at the epoch's end
])
def test_interrupted_run_stops_at_a_checkpoint_and_its_resume_command_matches_the_uninterrupted_run(
        tmp_path, signal_at, stops_at, uninterrupted):
    where, at_signal, final = interrupt_and_resume(tmp_path, RUN, signal_at)
    assert where == stops_at
    assert (final["epoch"], final["global_step"]) == (uninterrupted["epoch"], uninterrupted["global_step"])
    assert_same_tensors(uninterrupted["state_dict"], final["state_dict"], "weights")
    for sa, sb in zip(uninterrupted["optimizer_states"][0]["state"].values(),
                      final["optimizer_states"][0]["state"].values()):
        assert_same_tensors(sa, sb, "Adam state")


def test_interrupted_truncated_bptt_run_resumes_mid_stream_bit_identically(tmp_path):
    """A language model trained on one stream carries its state across batches: last.ckpt keeps it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the cat number {i % 7} sat on mat {i % 5}\n" for i in range(200)))
    run = ["task=lm", f"data.train_file={corpus}", "model.tbptt_steps=5", "trainer.gradient_clip_val=null",
           "model.clip_grad_norm=1.0", "hidden_size=16", "model.embedding_dim=16", "data.batch_size=4", "data.eval_batch_size=4",
           "trainer.max_epochs=2", "patience=null", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2",
           "model.samples=1"]
    a = run_cmd([*module, *run, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert a.returncode == 0, a.explain()
    where, at_signal, final = interrupt_and_resume(tmp_path, run, "SIGINT:training_step:1:4")
    assert where[1] == 1 and "tbptt_carry" in at_signal  # stopped mid-stream, with the state to carry on from
    expected = load(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == expected["global_step"]
    assert_same_tensors(expected["state_dict"], final["state_dict"], "weights")
