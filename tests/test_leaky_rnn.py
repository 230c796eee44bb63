import torch

from rtk_leaky_rnn import LeakyRNNCell
from toolkit.testing import CellConformance


class TestLeakyRNN(CellConformance):
    cell = "leaky_rnn"


class TestLeakyRNNSlow(CellConformance):       # the kit again, with other hparams
    cell = "leaky_rnn"
    hparams = {"alpha": 0.1}


def test_step_is_the_leaky_equation():         # what is special: the cell's own math
    torch.manual_seed(0)
    cell = LeakyRNNCell(3, 4, alpha=0.25).double()
    x, h_prev = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    update = torch.tanh(cell.input_to_hidden(x) + cell.hidden_to_hidden(h_prev))
    h, _ = cell(x, (h_prev,))
    torch.testing.assert_close(h, 0.75 * h_prev + 0.25 * update, rtol=0, atol=1e-12)
