"""Broken plugins, installed for real (distributions on PYTHONPATH), fail loudly but alone.

`rtk plugins` reports each with its distribution and the reason; `rtk train cell=<it>`
exits 2 with that very sentence; training any other cell is unaffected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, rtk_cmd

# why it is broken -> (distribution, cell name, entry point value, module source)
BROKEN = {
    "import fails": ("broken-import", "broken", "broken_import:BrokenCell", "import some_missing_dependency\n"),
    "not a cell": ("broken-type", "linear_cell", "broken_type:Linear", "from torch.nn import Linear\n"),
    "name taken": ("broken-clash", "lstm", "broken_clash:LSTMCell", "from toolkit.cells.builtin import LSTMCell\n"),
}


def _install_fake_distribution(site: Path, dist: str, cell: str, value: str, source: str) -> None:
    """What pip leaves in site-packages: the module and a dist-info holding entry_points.txt."""
    module = value.split(":")[0]
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text(f"[toolkit.cells]\n{cell} = {value}\n")


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    for spec in BROKEN.values():
        _install_fake_distribution(site, *spec)
    return {"PYTHONPATH": str(site)}


@pytest.fixture(scope="module")
def plugins_output(broken_env, tmp_path_factory) -> str:
    r = rtk_cmd("plugins", cwd=tmp_path_factory.mktemp("cwd"), env=broken_env)
    assert r.returncode == 0, r.explain()
    return r.stdout


def _reason(plugins_stdout: str, cell: str, dist: str) -> str:
    prefix = f"{cell} ({dist} 0.2.0) failed: "
    lines = [line for line in plugins_stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, plugins_stdout
    return lines[0].removeprefix(prefix)


def test_rtk_plugins_lists_every_broken_plugin_with_its_distribution_and_the_rest_ok(plugins_output):
    rows = [line.split() for line in plugins_output.split("\n\n")[0].splitlines()[1:]]
    failed = {(r[0], r[1]) for r in rows if r[-1] == "failed"}
    # a clash fails both registrations of the name: users must uninstall one
    assert failed == {(cell, dist) for dist, cell, _, _ in BROKEN.values()} | {("lstm", "recurrent-toolkit")}
    assert {"gru", "rnn"} <= {r[0] for r in rows if r[-1] == "ok"}
    for dist, cell, value, _ in BROKEN.values():
        assert f"{dist} 0.2.0" in _reason(plugins_output, cell, dist)


@pytest.mark.parametrize("why", sorted(BROKEN))
def test_rtk_train_with_a_broken_plugin_exits_2_with_the_sentence_rtk_plugins_prints(
        rtk, broken_env, plugins_output, tmp_path, why):
    dist, cell, _, _ = BROKEN[why]
    reason = _reason(plugins_output, cell, dist)
    run_dir = tmp_path / "run"
    r = rtk("train", f"cell={cell}", "task=peptides", *TINY, f"hydra.run.dir={run_dir}", env=broken_env)
    assert r.returncode == 2, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    assert [line for line in r.stderr.splitlines() if line.startswith("error: ")] == [f"error: {reason}"]
    assert not run_dir.exists()


def test_training_another_cell_is_unaffected_by_the_broken_plugins(rtk, broken_env, tmp_path):
    run_dir = tmp_path / "run"
    r = rtk("train", "cell=gru", "task=peptides", *TINY, f"hydra.run.dir={run_dir}", env=broken_env)
    assert r.returncode == 0, r.explain()
    assert "gru (native)" in r.stdout and "broken" not in r.stdout + r.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
