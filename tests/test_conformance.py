"""The conformance kit (toolkit.testing) over every built-in cell, and the kit catching broken cells."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.cells import CellEntry, RecurrentCell, registry
from toolkit.testing import CHECKS, CellConformance, check_cell, run_check


class TestRNN(CellConformance):
    cell = "rnn"


class TestGRUSimple(CellConformance):
    cell = "gru_simple"


class TestGRUResetAfter(CellConformance):
    cell = "gru"
    hparams = {"reset": "after"}


class TestGRUResetBefore(CellConformance):
    cell = "gru"
    hparams = {"reset": "before"}


class TestLSTM(CellConformance):
    cell = "lstm"


class TestPeepholeLSTM(CellConformance):
    cell = "peephole_lstm"


def test_the_base_class_runs_every_check():
    tests = sorted(n.removeprefix("test_") for n in dir(CellConformance) if n.startswith("test_"))
    assert tests == sorted(CHECKS)


# ----------------------------------------------------- the kit catches what it should
class LeakyPaddingCell(RecurrentCell):
    """Ignores its state, but its sequence path leaks the future (a non-causal 'scan')."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, hidden_size)

    def forward(self, x_t, state):
        h = torch.tanh(self.proj(x_t) + state[0])
        return h, (h,)

    def forward_sequence(self, x, state, lengths):
        h = torch.tanh(self.proj(x) + state[0][:, None] + 0.1 * self.proj(x).mean(1, keepdim=True))
        return h, (h[:, -1],)


class UnusedParameterCell(RecurrentCell):
    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size + hidden_size, hidden_size)
        self.forgotten = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x_t, state):
        h = torch.tanh(self.proj(torch.cat([x_t, state[0]], 1)))
        return h, (h,)


class Float32Cell(UnusedParameterCell):
    """Hands back float32 whatever the input (a hard-coded dtype)."""

    def forward(self, x_t, state):
        h = torch.tanh(self.proj(torch.cat([x_t, state[0]], 1))) * self.forgotten
        return h.float(), (h,)


@pytest.fixture
def fake_cells(monkeypatch):
    import sys
    import types

    module = types.ModuleType("rtk_kit_fakes")
    module.Leaky, module.Unused, module.F32 = LeakyPaddingCell, UnusedParameterCell, Float32Cell
    monkeypatch.setitem(sys.modules, "rtk_kit_fakes", module)
    extra = tuple(CellEntry(n, f"rtk_kit_fakes:{v}", "kit-fakes", "0.1")
                  for n, v in (("leaky", "Leaky"), ("unused", "Unused"), ("f32", "F32")))
    cached = registry._discover
    entries = tuple(sorted(cached() + extra, key=lambda e: (e.name, e.dist)))
    monkeypatch.setattr(registry, "_discover", lambda: entries)
    yield
    cached.cache_clear()


@pytest.mark.parametrize("cell, check, reason", [
    ("leaky", "backends_agree_with_loop", "backend=sequence vs loop"),
    ("unused", "gradients_reach_every_parameter", "cells.0.forgotten gets no gradient"),
    ("f32", "dtype_and_device", "is torch.float32 on cpu, expected torch.float64 on cpu"),
])
def test_a_failing_check_names_the_cell_the_check_and_the_reason(fake_cells, cell, check, reason):
    with pytest.raises(AssertionError) as err:
        run_check(check, cell)
    assert f"cell '{cell}' failed check '{check}'" in str(err.value)
    assert reason in str(err.value)


def test_check_cell_reports_every_failed_check_at_once(fake_cells):
    with pytest.raises(AssertionError) as err:
        check_cell("leaky")
    message = str(err.value)
    assert message.startswith("3 of 10 conformance checks failed")
    for check in ("padding_invariance_uni", "padding_invariance_bi", "backends_agree_with_loop"):
        assert f"failed check '{check}'" in message
    check_cell("gru", reset="before")  # and a conforming cell passes silently
