"""The template cell: the toolkit's conformance kit in one line, plus its own equation.

Renaming the template? Rename this file too (test_<your cell>.py): pytest wants
test-module names to be unique across the packages it collects.
"""

from __future__ import annotations

import torch

from rtk_cell_template import TemplateRNNCell
from toolkit.cells import build_cell
from toolkit.testing import CellConformance


class TestTemplateRNN(CellConformance):
    cell = "template_rnn"


def test_registered_name_builds_this_class():
    assert type(build_cell("template_rnn", 3, 4)) is TemplateRNNCell


def test_step_is_the_elman_equation():
    torch.manual_seed(0)
    cell = TemplateRNNCell(3, 4).double()
    x, h_prev = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    W_x, b_x = cell.input_to_hidden.weight, cell.input_to_hidden.bias
    W_h, b_h = cell.hidden_to_hidden.weight, cell.hidden_to_hidden.bias
    h, (state,) = cell(x, (h_prev,))
    torch.testing.assert_close(h, torch.tanh(x @ W_x.T + b_x + h_prev @ W_h.T + b_h), rtol=0, atol=1e-12)
    assert h is state
