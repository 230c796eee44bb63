"""The benchmark suite (``python -m benchmarks``) runs end to end at tiny sizes and reports every section.

No timing is asserted: on a shared machine the numbers of a smoke run mean nothing.
What a user would notice is a suite that crashes, drops a section, or writes no table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` is a top-level folder of the repo, not an installed package

from benchmarks import run  # noqa: E402
from benchmarks.report import SECTIONS  # noqa: E402


@pytest.fixture(scope="module")
def quick_rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: two spinning OpenMP threads only slow a tiny run down
    try:
        return run.run_suite(run.QUICK, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)


def test_every_section_has_rows_with_finite_values(quick_rows):
    assert {r.section for r in quick_rows} == set(SECTIONS)
    assert all(r.value == r.value and r.value >= 0 for r in quick_rows)  # no nan, no negative ratio
    cases = [r.case for r in quick_rows if r.section == "layer overhead"]
    # cell x direction x depth x (fixed, variable, variable output only) x (fwd+bwd, inference)
    assert len(cases) == 3 * 2 * 2 * 3 * 2


def test_targets_of_the_issue_are_attached(quick_rows):
    targeted = {r.section for r in quick_rows if r.target is not None}
    assert targeted == {"layer overhead", "custom cells", "throughput vs the machine", "end to end", "padding"}
    assert all(r.status in ("met", "missed") for r in quick_rows if r.target is not None)


def test_report_has_machine_command_every_section_and_a_plot(quick_rows, tmp_path):
    out = tmp_path / "performance.md"
    run.write(quick_rows, out, "python -m benchmarks --quick", run.settings_text(run.QUICK))
    text = out.read_text()
    for needle in ("python -m benchmarks --quick", "cpu model", "torch", "date", "| case |"):
        assert needle in text
    for section in SECTIONS:
        assert f"## {section[0].upper()}{section[1:]}" in text
    assert out.with_suffix(".png").stat().st_size > 1000


def test_command_line_help_names_the_sections(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_rows_whose_plugin_is_missing_are_skipped_with_a_one_line_note(monkeypatch):
    from benchmarks import kernels

    from toolkit.cells import available_cells

    installed = available_cells()
    monkeypatch.setattr(kernels, "available_cells", lambda: [c for c in installed if c not in ("mingru", "layernorm_lstm")])
    said: list[str] = []
    rows = run.run_suite(run.QUICK, only=["custom cells", "long sequences"], log=said.append)
    assert "note: skipped the custom cells rows of cell 'layernorm_lstm': its plugin rtk-layernorm-lstm is not " \
           "installed (pip install -e plugins/rtk-layernorm-lstm)" in said
    assert "note: skipped the long sequences rows of cell 'mingru': its plugin rtk-mingru is not installed " \
           "(pip install -e plugins/rtk-mingru)" in said
    assert {r.section for r in rows} == {"custom cells"}  # the built-in custom cells still run
    assert not any("layernorm_lstm" in r.case for r in rows)
