"""minGRU: the toolkit's conformance kit, plus the scan held to the step-by-step form."""

from __future__ import annotations

import pytest
import torch

from rtk_mingru import MinGRUCell, g, log_g
from toolkit.cells import build_cell
from toolkit.layers import Recurrent
from toolkit.testing import CellConformance


class TestMinGRU(CellConformance):
    cell = "mingru"


def _steps(cell, x, h0):
    """The step form, one forward() per time step: x (B, T, I) -> (B, T, H)."""
    state, outs = (h0,), []
    for t in range(x.size(1)):
        y, state = cell(x[:, t], state)
        outs.append(y)
    return torch.stack(outs, dim=1)


def _cell(dtype, I=3, H=5, seed=0):
    torch.manual_seed(seed)
    return MinGRUCell(I, H).to(dtype)


def test_is_registered_and_auto_picks_the_scan():
    assert type(build_cell("mingru", 3, 4)) is MinGRUCell
    assert build_cell("mingru", 3, 4).backends() == ["sequence", "loop"]
    assert Recurrent("mingru", 3, 4).backend == "sequence"


def test_step_is_the_papers_equations():
    cell = _cell(torch.float64)
    x, h_prev = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    z = torch.sigmoid(x @ cell.linear_z.weight.T + cell.linear_z.bias)
    v = x @ cell.linear_h.weight.T + cell.linear_h.bias
    h_tilde = torch.where(v >= 0, v + 0.5, 1 / (1 + torch.exp(-v)))
    h, (state,) = cell(x, (h_prev,))
    torch.testing.assert_close(h, (1 - z) * h_prev + z * h_tilde, rtol=0, atol=1e-12)
    assert h is state


def test_g_is_positive_continuous_at_zero_and_log_g_is_its_log():
    v = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (g(v) > 0).all()
    assert g(torch.tensor(0.0)) == 0.5 and torch.isclose(g(torch.tensor(-1e-9)), torch.tensor(0.5))
    torch.testing.assert_close(log_g(v), torch.log(g(v)))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("T", [1, 7, 64, 65, 200])  # below, at and across the scan's chunk boundary
def test_scan_equals_step_by_step(dtype, tol, T):
    cell = _cell(dtype)
    x = torch.randn(4, T, 3, dtype=dtype) * 2
    h0 = torch.randn(4, 5, dtype=dtype)
    y, (last,) = cell.forward_sequence(x, (h0,), None)
    ref = _steps(cell, x, h0)
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, ref[:, -1], rtol=tol, atol=tol)


def test_scan_with_lengths_returns_each_sequences_own_last_state():
    cell = _cell(torch.float64)
    x = torch.randn(3, 70, 3, dtype=torch.float64)
    x[1, 10:] = float("inf")  # whatever sits in the padding must not matter
    lengths = torch.tensor([70, 10, 65])
    h0 = torch.randn(3, 5, dtype=torch.float64)
    y, (last,) = cell.forward_sequence(x, (h0,), lengths)
    for i, n in enumerate(lengths.tolist()):
        ref = _steps(cell, x[i:i + 1, :n], h0[i:i + 1])
        torch.testing.assert_close(y[i, :n], ref[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(last[i], ref[0, -1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_backend_equals_loop_through_the_layer_bidirectional_with_lengths(dtype):
    """Both backends against float64 loop: float64 to 1e-10; float32 to what its rounding allows."""
    torch.manual_seed(0)
    ref = Recurrent("mingru", 3, 5, num_layers=2, bidirectional=True, backend="loop").double()
    x = torch.randn(4, 90, 3, dtype=torch.float64)
    lengths = torch.tensor([90, 1, 64, 77])

    def run(layer):
        xi = x.to(next(layer.parameters()).dtype, copy=True).requires_grad_()
        y, (h,) = layer(xi, lengths=lengths)
        (y.square().sum() + h.sum()).backward()
        return [y, h, xi.grad, *(p.grad for p in layer.parameters())]

    expected = run(ref)
    for backend in ("sequence", "loop"):
        layer = Recurrent("mingru", 3, 5, num_layers=2, bidirectional=True, backend=backend).to(dtype)
        layer.load_state_dict(ref.state_dict())
        for what, got, want in zip(["y", "h", "x.grad", *(n for n, _ in layer.named_parameters())],
                                   run(layer), expected):
            # float32: outputs within 2e-5, gradients (sums over B x T terms) within 1e-3 of their scale
            tol = 1e-10 if dtype == torch.float64 else (2e-5 if what in ("y", "h") else 1e-3 * want.abs().max().item())
            torch.testing.assert_close(got.double(), want, rtol=0, atol=tol, msg=f"{backend} {what}")


def test_state_carries_across_chunks_of_a_sequence():
    cell = _cell(torch.float64)
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    whole, _ = cell.forward_sequence(x, (torch.zeros(2, 5, dtype=torch.float64),), None)
    first, state = cell.forward_sequence(x[:, :20], (torch.zeros(2, 5, dtype=torch.float64),), None)
    second, _ = cell.forward_sequence(x[:, 20:], state, None)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: gates saturate at 0 and 1, h~ reaches ~100
def test_long_sequence_is_stable_in_float32(scale):
    T = 512
    cell64 = _cell(torch.float64, I=8, H=16)
    cell32 = _cell(torch.float32, I=8, H=16)
    x = torch.randn(2, T, 8, dtype=torch.float64) * scale
    ref = _steps(cell64, x, torch.zeros(2, 16, dtype=torch.float64))
    x32 = x.float().requires_grad_()
    y, _ = cell32.forward_sequence(x32, (torch.zeros(2, 16),), None)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x32.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in cell32.parameters())
    rel = ((y.double() - ref).abs() / ref.abs().clamp(min=1)).max().item()
    # saturated gates make |log a| large, and float32 rounds cumsum(log a) in proportion
    assert rel < (1e-5 if scale == 1.0 else 1e-4), f"float32 scan drifts from the float64 steps by {rel:.2e} at T={T}"
