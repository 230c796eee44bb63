"""Loading someone else's file never runs their code, and a run never reaches for the network.

- A checkpoint whose unpickling would run a command is refused by ``rtk predict``
  and ``rtk train ckpt_path=…`` (``weights_only=True``), and the command never runs.
- The hyper-parameters stored in a checkpoint only rebuild toolkit heads and
  registered cells: an unknown head, an unknown cell or a Hydra ``_target_`` is refused.
- ``rtk train`` and ``rtk predict`` succeed with every socket connection refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import TINY, rtk_cmd
from test_errors import app, make_checkpoint, one_sentence  # noqa: F401  (app is a fixture)


class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def poisoned(tmp_path):
    """A real toolkit checkpoint with a payload in its hyper-parameters; returns (path, marker)."""
    marker = tmp_path / "pwned"
    path = make_checkpoint(tmp_path / "poisoned.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["note"] = Payload(marker)
    torch.save(ckpt, path)
    return path, marker


def test_the_payload_is_live_when_loaded_unsafely(poisoned, tmp_path):
    path, marker = poisoned
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    assert marker.exists(), "the payload does not work, so the tests below would prove nothing"


def test_predict_refuses_a_checkpoint_that_would_run_code(poisoned, capsys):
    from toolkit.cli import main

    path, marker = poisoned
    assert main(["predict", f"ckpt={path}", "text=a film"]) == 2
    assert one_sentence(capsys.readouterr().err) == (
        f"error: {path} is not a checkpoint this toolkit can read safely: it is not a torch checkpoint, "
        "or unpickling it would run code")
    assert not marker.exists()


def test_rtk_predict_process_refuses_it_too(poisoned, tmp_path):
    path, marker = poisoned
    r = rtk_cmd("predict", f"ckpt={path}", "text=a film", cwd=tmp_path)
    assert r.returncode == 2 and "would run code" in one_sentence(r.stderr), r.explain()
    assert not marker.exists()


def test_train_refuses_to_resume_from_a_checkpoint_that_would_run_code(poisoned, app):  # noqa: F811
    path, marker = poisoned
    code, line = app("task=peptides", f"ckpt_path={path}")
    assert code == 2 and line.startswith(f"error: {path} is not a checkpoint this toolkit can read safely")
    assert not marker.exists()


@pytest.mark.parametrize("hparams, sentence", [
    ({"head": "os.system"}, "holds a 'os.system' model, which this toolkit cannot load"),
    ({"cell": {"name": "nonexistent", "backend": "auto"}, "cell_plugin": None},
     "needs the cell 'nonexistent', which is not installed"),
    ({"cell": {"name": "lstm", "_target_": "os.system"}},
     "holds a Hydra instantiation key (hyper_parameters.cell._target_); a checkpoint's hyper-parameters can "
     "only rebuild toolkit heads and registered cells"),
    ({"spec": {"_target_": "builtins.eval", "vocab": []}},
     "holds a Hydra instantiation key (hyper_parameters.spec._target_)"),
    ({"callbacks": [{"_target_": "subprocess.run", "args": ["touch", "x"]}]},
     "holds a Hydra instantiation key (hyper_parameters.callbacks[0]._target_)"),
])
def test_checkpoint_hyper_parameters_only_rebuild_toolkit_parts(capsys, tmp_path, hparams, sentence):
    from toolkit.cli import main

    path = make_checkpoint(tmp_path / "odd.ckpt", **hparams)
    assert main(["predict", f"ckpt={path}", "text=a film"]) == 2
    line = one_sentence(capsys.readouterr().err)
    assert line.startswith(f"error: {path} ") and sentence in line, line


def test_train_refuses_a_checkpoint_naming_a_target(app, tmp_path):  # noqa: F811
    path = make_checkpoint(tmp_path / "odd.ckpt", cell={"name": "lstm", "_target_": "os.system"})
    code, line = app("task=peptides", f"ckpt_path={path}")
    assert code == 2 and "holds a Hydra instantiation key (hyper_parameters.cell._target_)" in line


NO_NETWORK = textwrap.dedent("""
    # Written by tests/test_security.py: every socket connection is refused and logged.
    import os
    import socket

    _LOG = os.environ["RTK_TEST_NET_LOG"]
    with open(_LOG + ".loaded", "a") as f:
        f.write(f"{os.getpid()}\\n")


    def _refuse(*args, **kwargs):
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {args[1:]!r}\\n")
        raise OSError("network access blocked by tests/test_security.py")


    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
""")


def test_train_and_predict_open_no_network_connection(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    log = tmp_path / "net.log"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RTK_TEST_NET_LOG": str(log), "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=peptides", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.explain()
    p = rtk_cmd("predict", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "text=GLFDIIKKIAESF", cwd=tmp_path,
                env=env)
    assert p.returncode == 0, p.explain()
    assert len(log.with_suffix(".log.loaded").read_text().split()) >= 2, "sitecustomize was not loaded"
    assert not log.exists(), f"connections were attempted:\n{log.read_text()}"
