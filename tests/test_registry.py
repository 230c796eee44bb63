"""The cell registry: entry-point discovery, safe loading, one-sentence errors."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from toolkit.cells import (
    CellEntry,
    RecurrentCell,
    available_cells,
    build_cell,
    cell_entries,
    clear_cell_cache,
    describe_cells,
    load_cell_class,
    registry,
)
from toolkit.cells.builtin import GRUCell, LSTMCell
from toolkit.errors import CellError

BUILTINS = ["gru", "gru_simple", "lstm", "peephole_lstm", "rnn"]


class GoodCell(RecurrentCell):
    def __init__(self, input_size, hidden_size, scale: float = 1.0):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, hidden_size)
        self.scale = scale

    def forward(self, x_t, state):
        h = torch.tanh(self.proj(x_t) + self.scale * state[0])
        return h, (h,)


class ExplodingCell(GoodCell):
    def __init__(self, input_size, hidden_size):
        raise RuntimeError("kaboom")


@pytest.fixture
def plugins(monkeypatch):
    """Install fake third-party entries next to the real ones; returns the installer."""
    module = types.ModuleType("rtk_fake_plugin")
    module.GoodCell, module.ExplodingCell, module.NotACell = GoodCell, ExplodingCell, nn.Linear
    monkeypatch.setitem(sys.modules, "rtk_fake_plugin", module)
    real = registry._discover()

    def install(*extra: CellEntry) -> None:
        entries = tuple(sorted(real + extra, key=lambda e: (e.name, e.dist)))
        monkeypatch.setattr(registry, "_discover", lambda: entries)

    return install


@pytest.fixture(autouse=True)
def _only_the_toolkits_own_cells(monkeypatch):
    """Hide pip-installed plugins (e.g. plugins/ in CI): these tests pin the built-ins plus their own fakes."""
    real = importlib.metadata.entry_points

    def core_only(**kw):
        found = real(**kw)
        if kw.get("group") != registry.GROUP:
            return found
        return [ep for ep in found if getattr(ep, "dist", None) is None
                or registry._normalise(ep.dist.metadata["Name"]) == registry.CORE_DISTRIBUTION]

    monkeypatch.setattr(importlib.metadata, "entry_points", core_only)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch, _only_the_toolkits_own_cells):
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    clear_cell_cache()
    cached = registry._discover  # the `plugins` fixture may still have it replaced at teardown
    yield
    cached.cache_clear()


def test_available_cells_lists_the_five_builtins_sorted():
    assert available_cells() == BUILTINS


def test_builtins_are_entry_points_of_recurrent_toolkit_itself():
    entries = {e.name: e for e in cell_entries()}
    assert entries["lstm"] == CellEntry("lstm", "toolkit.cells.builtin:LSTMCell", "recurrent-toolkit",
                                        importlib.metadata.version("recurrent-toolkit"))
    assert [e.name for e in cell_entries()] == BUILTINS


def test_listing_cells_imports_no_cell_module():
    code = ("import sys; from toolkit.cells import available_cells, cell_entries; "
            "names = available_cells(); cell_entries(); "
            "assert 'toolkit.cells.builtin' not in sys.modules, 'builtin imported'; print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'lstm'" in out.stdout


def test_entry_point_scan_is_cached_until_cleared(monkeypatch):
    calls = []
    real = importlib.metadata.entry_points

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    available_cells(), available_cells(), cell_entries()
    assert calls == [{"group": "toolkit.cells"}]
    clear_cell_cache()
    available_cells()
    assert len(calls) == 2


def test_build_cell_builds_the_registered_class_with_its_hparams():
    cell = build_cell("gru", 3, 4, reset="before")
    assert type(cell) is GRUCell and cell.reset == "before"
    assert (cell.input_size, cell.hidden_size) == (3, 4)
    assert load_cell_class("lstm") is LSTMCell


def test_unknown_cell_error_lists_the_available_cells():
    with pytest.raises(CellError) as err:
        build_cell("foo", 3, 4)
    assert str(err.value) == "unknown cell 'foo'; available cells: gru, gru_simple, lstm, peephole_lstm, rnn"


def test_build_cell_rejects_unknown_hparams_before_building():
    with pytest.raises(CellError, match=r"cell 'lstm' got unknown hparam 'reset'; accepted hparams: none"):
        build_cell("lstm", 3, 4, reset="after")


def test_third_party_cell_is_discovered_built_and_described(plugins):
    plugins(CellEntry("good", "rtk_fake_plugin:GoodCell", "good-plugin", "1.2"))
    assert available_cells() == sorted(BUILTINS + ["good"])
    assert build_cell("good", 3, 4, scale=0.5).scale == 0.5
    row = next(r for r in describe_cells() if r["name"] == "good")
    assert row == {"name": "good", "distribution": "good-plugin", "version": "1.2",
                   "value": "rtk_fake_plugin:GoodCell", "status": "ok", "reason": None, "backends": ["loop"]}


def test_describe_cells_reports_the_backends_of_each_builtin():
    rows = {r["name"]: r for r in describe_cells()}
    assert {n: r["backends"] for n, r in rows.items()} == {
        "gru": ["native", "sequence", "loop"], "gru_simple": ["loop"], "lstm": ["native", "loop"],
        "peephole_lstm": ["sequence", "loop"], "rnn": ["native", "loop"]}
    assert all(r["status"] == "ok" and r["distribution"] == "recurrent-toolkit" for r in rows.values())


def _rows():
    return {(r["name"], r["distribution"]): r for r in describe_cells()}


def test_plugin_that_fails_to_import_is_reported_failed_while_others_stay_ok(plugins):
    plugins(CellEntry("broken", "nonexistent_mod:Cell", "broken-plugin", "0.0.1"))
    rows = _rows()
    broken = rows[("broken", "broken-plugin")]
    assert broken["status"] == "failed" and broken["backends"] == []
    for part in ("'broken'", "broken-plugin 0.0.1", "nonexistent_mod:Cell",
                 "ModuleNotFoundError: No module named 'nonexistent_mod'"):
        assert part in broken["reason"]
    assert all(r["status"] == "ok" for k, r in rows.items() if k[0] != "broken")
    with pytest.raises(CellError) as err:
        build_cell("broken", 3, 4)
    assert str(err.value) == broken["reason"]


def test_entry_point_object_that_is_not_a_cell_is_rejected_with_its_distribution(plugins):
    plugins(CellEntry("linear", "rtk_fake_plugin:NotACell", "odd-plugin", "2.0"))
    with pytest.raises(CellError, match=r"cell 'linear' from odd-plugin 2.0 .* is not a RecurrentCell subclass"):
        load_cell_class("linear")
    assert _rows()[("linear", "odd-plugin")]["status"] == "failed"


def test_cell_whose_constructor_crashes_is_a_cell_error_naming_it(plugins):
    plugins(CellEntry("exploding", "rtk_fake_plugin:ExplodingCell", "boom-plugin", "1.0"))
    with pytest.raises(CellError, match=r"cell 'exploding' could not be built .*RuntimeError: kaboom"):
        build_cell("exploding", 3, 4)
    row = _rows()[("exploding", "boom-plugin")]
    assert row["status"] == "failed" and "kaboom" in row["reason"]


def test_same_name_from_two_distributions_is_an_error_naming_both(plugins):
    plugins(CellEntry("lstm", "rtk_fake_plugin:GoodCell", "other-plugin", "3.1"))
    with pytest.raises(CellError) as err:
        build_cell("lstm", 3, 4)
    assert "'lstm'" in str(err.value)
    assert "recurrent-toolkit" in str(err.value) and "other-plugin 3.1" in str(err.value)
    rows = _rows()
    assert rows[("lstm", "recurrent-toolkit")]["status"] == rows[("lstm", "other-plugin")]["status"] == "failed"
    assert rows[("gru", "recurrent-toolkit")]["status"] == "ok"


def test_real_entry_point_without_a_distribution_is_listed_and_fails_alone(monkeypatch):
    real = importlib.metadata.entry_points
    fake = importlib.metadata.EntryPoint(name="broken", value="nonexistent_mod:Cell", group="toolkit.cells")

    def with_fake(**kw):
        return [*real(**kw), fake]

    monkeypatch.setattr(importlib.metadata, "entry_points", with_fake)
    clear_cell_cache()
    assert available_cells() == sorted(BUILTINS + ["broken"])
    rows = _rows()
    assert rows[("broken", "<unknown distribution>")]["status"] == "failed"
    assert sum(r["status"] == "ok" for r in rows.values()) == 5


@pytest.mark.parametrize("value, disabled", [("1", True), ("true", True), ("0", False), ("", False)])
def test_disable_plugin_autoload_keeps_only_the_builtins(plugins, monkeypatch, value, disabled):
    plugins(CellEntry("good", "rtk_fake_plugin:GoodCell", "good-plugin", "1.2"))
    monkeypatch.setenv("RTK_DISABLE_PLUGIN_AUTOLOAD", value)
    assert available_cells() == (BUILTINS if disabled else sorted(BUILTINS + ["good"]))
    if disabled:
        with pytest.raises(CellError, match="unknown cell 'good'"):
            build_cell("good", 3, 4)
        assert [r["name"] for r in describe_cells()] == BUILTINS


class LeakyCell(GoodCell):
    def __init__(self, input_size, hidden_size, alpha: float = 0.5, sizes: tuple = (1, 2), act=torch.tanh):
        super().__init__(input_size, hidden_size)
        self.alpha = alpha


def test_a_plugin_cells_hparam_defaults_reach_hydra_from_its_signature(plugins, compose, monkeypatch):
    from hydra.core.config_store import ConfigStore

    sys.modules["rtk_fake_plugin"].LeakyCell = LeakyCell
    plugins(CellEntry("leaky_rnn", "rtk_fake_plugin:LeakyCell", "rtk-leaky-rnn", "0.1.0"))
    repo = ConfigStore.instance().repo
    monkeypatch.setitem(repo, "cell", dict(repo.get("cell", {})))  # the stored leaky_rnn node goes at teardown
    assert LeakyCell.hparam_defaults() == {"alpha": 0.5, "sizes": [1, 2]}  # a function is no config value
    assert dict(compose(["cell=leaky_rnn"]).cell) == {"name": "leaky_rnn", "backend": "auto", "alpha": 0.5,
                                                     "sizes": [1, 2]}
    assert compose(["cell=leaky_rnn", "cell.alpha=0.2"]).cell.alpha == 0.2  # no '+' needed
