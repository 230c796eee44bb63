"""Layer-normalised LSTM: the toolkit's conformance kit, plus the paper's equations written out by hand."""

from __future__ import annotations

import pytest
import torch

from rtk_layernorm_lstm import LayerNormLSTMCell
from toolkit.cells import build_cell
from toolkit.errors import CellError
from toolkit.layers import Recurrent
from toolkit.testing import CellConformance


class TestLayerNormLSTM(CellConformance):
    cell = "layernorm_lstm"


class TestLayerNormLSTMWithHparams(CellConformance):
    cell = "layernorm_lstm"
    hparams = {"forget_bias": 0.0, "eps": 1e-3}


def _ln(v, gain, shift, eps):
    """LN(v; alpha, beta) over the last dimension, with the biased variance."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return gain * (v - mu) / torch.sqrt(var + eps) + shift


def _reference_step(cell, x, h_prev, c_prev):
    """Ba et al. (2016), eqs. 20-22, one line per equation."""
    H, eps = cell.hidden_size, cell.eps
    a = (_ln(x @ cell.weight_ih.T, cell.ln_x_weight, cell.ln_x_bias, eps)
         + _ln(h_prev @ cell.weight_hh.T, cell.ln_h_weight, cell.ln_h_bias, eps) + cell.bias)
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(_ln(c, cell.ln_c_weight, cell.ln_c_bias, eps))
    return h, c


def _randomise(cell):
    """Gains and biases away from their 1 / 0 init, so the reference checks where each one enters."""
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


def test_is_registered_with_the_projected_sequence_path_and_the_loop():
    cell = build_cell("layernorm_lstm", 3, 4, forget_bias=0.5)
    assert type(cell) is LayerNormLSTMCell and cell.backends() == ["sequence", "loop"]
    assert Recurrent("layernorm_lstm", 3, 4).backend == "sequence"
    assert cell.bias[4:8].tolist() == [0.5] * 4 and cell.bias[:4].tolist() == [0.0] * 4
    with pytest.raises(CellError, match="accepted hparams: forget_bias, eps"):
        build_cell("layernorm_lstm", 3, 4, dropout=0.1)


def test_step_equals_the_papers_equations():
    torch.manual_seed(0)
    cell = _randomise(LayerNormLSTMCell(3, 5, eps=1e-3).double())
    x, h, c = (torch.randn(4, n, dtype=torch.float64) for n in (3, 5, 5))
    for _ in range(6):  # several steps: the state path too
        y, (h_new, c_new) = cell(x, (h, c))
        h_ref, c_ref = _reference_step(cell, x, h, c)
        torch.testing.assert_close(h_new, h_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(c_new, c_ref, rtol=0, atol=1e-12)
        assert y is h_new
        h, c, x = h_new, c_new, torch.randn_like(x)


def test_layer_over_a_padded_batch_equals_the_reference_loop():
    torch.manual_seed(1)
    layer = Recurrent("layernorm_lstm", 3, 5, bidirectional=True).double()
    for cell in layer.cells:
        _randomise(cell)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 4])
    y, (h_n, c_n) = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        for d, steps in enumerate((range(n), reversed(range(n)))):
            cell = layer.cells[d]
            h = c = torch.zeros(1, 5, dtype=torch.float64)
            for t in steps:
                h, c = _reference_step(cell, x[b:b + 1, t], h, c)
                torch.testing.assert_close(y[b, t, d * 5:(d + 1) * 5], h[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(h_n[d, b], h[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(c_n[d, b], c[0], rtol=0, atol=1e-12)


def test_normalisation_makes_the_gates_blind_to_the_scale_of_the_input():
    torch.manual_seed(2)
    cell = LayerNormLSTMCell(3, 5, eps=1e-12).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    state = cell.initial_state(4, dtype=torch.float64)
    torch.testing.assert_close(cell(x, state)[0], cell(100 * x, state)[0])


def _run(layer, x, lengths):
    xi = x.clone().requires_grad_()
    y, (h, c) = layer(xi, lengths=lengths)
    (y.sin().sum() + h.cos().sum() + (c * c).sum()).backward()
    return [y, h, c, xi.grad, *(p.grad for p in layer.parameters())]


def _pair(size, randomise, dtype):
    torch.manual_seed(3)
    seq = Recurrent("layernorm_lstm", size, 5, num_layers=2, bidirectional=True, backend="sequence").to(dtype)
    if randomise:
        for cell in seq.cells:
            _randomise(cell)
    loop = Recurrent("layernorm_lstm", size, 5, num_layers=2, bidirectional=True, backend="loop").to(dtype)
    loop.load_state_dict(seq.state_dict())
    return seq, loop


@pytest.mark.parametrize("lengths", [None, torch.tensor([7, 3, 5])], ids=["full", "padded"])
def test_sequence_path_equals_the_loop_within_1e10_in_float64_outputs_states_and_gradients(lengths):
    """The input term for all steps at once (input_projection) is the same math as the loop."""
    seq, loop = _pair(3, True, torch.float64)
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    for a, b in zip(_run(seq, x, lengths), _run(loop, x, lengths)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lengths", [None, torch.tensor([7, 3, 5])], ids=["full", "padded"])
def test_sequence_path_in_float32_is_as_accurate_as_the_loop(lengths):
    """float32: outputs within 1e-5 of the loop; gradients within 1e-4 of each tensor's scale.

    The layer norms' backward cancels digits: here the loop's own float32 gradients are up to
    ~5e-4 (absolute, ~1e-5 of their scale) from float64, so 1e-5 absolute between two float32
    paths would test rounding, not the math (which the float64 test holds to 1e-10)."""
    seq, loop = _pair(16, False, torch.float32)
    x = torch.randn(3, 7, 16)
    exact = _run(_pair(16, False, torch.float64)[1], x.double(), lengths)
    fast, slow = _run(seq, x, lengths), _run(loop, x, lengths)
    for a, b in zip(fast[:3], slow[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b, e in zip(fast, slow, exact):
        scale = e.abs().max()
        assert (a.double() - e).abs().max() <= 1e-4 * scale and (a - b).abs().max() <= 1e-4 * scale
