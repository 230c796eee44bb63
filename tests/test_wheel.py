"""The built wheel ships the config: a non-editable install composes `train` from toolkit.conf."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, child_env

COMPOSE = """
import importlib.resources, sys
import toolkit
from hydra import compose, initialize_config_module
site = sys.argv[1]
assert toolkit.__file__.startswith(site), toolkit.__file__
assert str(importlib.resources.files("toolkit.conf")).startswith(site)
with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
    cfg = compose("train", overrides=["cell=gru"])
print(cfg.task.name, cfg.cell.name, cfg.direction, cfg.data.source)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (so the build leaves nothing in the repo)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("toolkit", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (whl,) = out.glob("recurrent_toolkit-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contains_the_config_and_the_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        eps = zf.read(entry_points).decode()
    for path in ("toolkit/conf/train.yaml", "toolkit/conf/task/ner.yaml", "toolkit/conf/cell/lstm.yaml",
                 "toolkit/conf/trainer/ddp_cpu.yaml", "toolkit/conf/logger/wandb.yaml", "toolkit/cli.py"):
        assert path in names, path
    assert "rtk = toolkit.cli:main" in eps
    for cell in ("rnn", "gru_simple", "gru", "lstm", "peephole_lstm"):
        assert f"{cell} = toolkit.cells.builtin:" in eps


@pytest.mark.slow
def test_non_editable_install_composes_the_train_config(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env({"PYTHONPATH": str(site)})
    r = subprocess.run([sys.executable, "-c", COMPOSE, str(site)], capture_output=True, text=True,
                       cwd=elsewhere, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ner", "gru", "bi", "wnut16"]
    app = subprocess.run([sys.executable, "-m", "toolkit.train", "task=peptides", "--cfg", "job"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert app.returncode == 0, app.stderr
    assert "name: peptides" in app.stdout and "source: peptides" in app.stdout
    assert not (elsewhere / "runs").exists()


def test_source_tree_holds_toolkit_conf_for_runs_from_the_repository_root():
    """`pip install .` then `rtk train` in the clone: `python -m` imports ./toolkit, not the wheel."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert (repo / "toolkit" / "conf" / "train.yaml").is_file()
    # Import toolkit.conf from the source tree alone, with no installed finder to help.
    code = ("import sys, importlib.util; sys.meta_path = [f for f in sys.meta_path if 'Editable' not in type(f).__name__];"
            "import toolkit.conf, importlib.resources as r; print(r.files('toolkit.conf').joinpath('train.yaml').is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
