"""The built-in cells: one step each, held to torch's own cells and to the course math."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.cells import RecurrentCell, build_cell
from toolkit.cells.builtin import GRUCell, LSTMCell, PeepholeLSTMCell, RNNCell, SimpleGRUCell
from toolkit.errors import CellError

BUILTINS = {"rnn": RNNCell, "gru_simple": SimpleGRUCell, "gru": GRUCell,
            "lstm": LSTMCell, "peephole_lstm": PeepholeLSTMCell}
I, H, B = 3, 5, 4


def _state(cell: RecurrentCell, batch: int = B) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, cell.hidden_size, dtype=torch.float64) for _ in cell.state_names)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_builtin_cell_steps_with_the_contract_shapes_and_dtype(name):
    cell = build_cell(name, I, H).double()
    assert isinstance(cell, BUILTINS[name])
    assert (cell.input_size, cell.hidden_size) == (I, H)
    y, state = cell(torch.randn(B, I, dtype=torch.float64), _state(cell))
    assert y.shape == (B, H) and y.dtype == torch.float64
    assert len(state) == len(cell.state_names)
    assert all(s.shape == (B, H) and s.dtype == torch.float64 for s in state)
    assert torch.equal(state[0], y)  # the first state is always the output a<t>


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_initial_state_is_zeros_one_tensor_per_state_name(name):
    cell = build_cell(name, I, H)
    state = cell.initial_state(B, "cpu", torch.float64)
    assert len(state) == len(cell.state_names)
    assert all(s.shape == (B, H) and s.dtype == torch.float64 and not s.any() for s in state)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_parameters_start_in_torchs_uniform_range(name):
    cell = build_cell(name, I, 16)
    for p in cell.parameters():
        assert p.abs().max() <= 1 / 16 ** 0.5
        assert p.std() > 0  # actually initialised, not left empty / zero


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_unknown_hparam_names_the_cell_the_key_and_the_accepted_ones(name):
    with pytest.raises(CellError) as err:
        build_cell(name, I, H, hiden=3)
    msg = str(err.value)
    assert f"'{name}'" in msg and "'hiden'" in msg
    assert ("reset" in msg) if name == "gru" else ("accepted hparams: none" in msg)


def test_validate_hparams_reports_every_bad_key_at_once():
    with pytest.raises(CellError, match=r"unknown hparams 'a', 'b'; accepted hparams: reset"):
        GRUCell.validate_hparams({"b": 1, "reset": "after", "a": 2}, name="gru")
    GRUCell.validate_hparams({"reset": "before"})  # a known key passes


def test_cell_taking_any_kwargs_accepts_any_hparam():
    class Open(RecurrentCell):
        def __init__(self, input_size, hidden_size, **kw):
            super().__init__(input_size, hidden_size)

    assert Open.hparam_names() is None
    Open.validate_hparams({"anything": 1})


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_sizes_are_a_cell_error(size):
    with pytest.raises(CellError, match="hidden_size must be a positive int"):
        build_cell("rnn", I, size)


def test_gru_reset_other_than_before_or_after_is_a_cell_error():
    with pytest.raises(CellError, match=r"reset must be 'before' or 'after', got 'sideways'"):
        build_cell("gru", I, H, reset="sideways")


def test_gru_native_kernel_only_for_reset_after():
    assert build_cell("gru", I, H).native == "gru"
    assert build_cell("gru", I, H, reset="before").native is None
    assert build_cell("gru", I, H, reset="before").backends() == ["sequence", "loop"]


def _copy_and_compare(ours: RecurrentCell, theirs: nn.Module, lstm: bool) -> None:
    theirs.load_state_dict(ours.state_dict())  # same names, same layout
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    state = _state(ours)
    y, new = ours(x, state)
    ref = theirs(x, state if lstm else state[0])
    ref_state = ref if lstm else (ref,)
    for a, b in zip(new, ref_state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    g = torch.randn(B, H, dtype=torch.float64)
    grads = torch.autograd.grad((new[-1] * g).sum() + y.sum(), [x, *ours.parameters()])
    ref_grads = torch.autograd.grad((ref_state[-1] * g).sum() + ref_state[0].sum(), [x, *theirs.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, torch_cls", [("rnn", nn.RNNCell), ("gru", nn.GRUCell), ("lstm", nn.LSTMCell)])
def test_native_capable_cells_match_torchs_cells_in_outputs_and_gradients(name, torch_cls):
    ours = build_cell(name, I, H).double()
    theirs = torch_cls(I, H).double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    _copy_and_compare(ours, theirs, lstm=name == "lstm")


def test_gru_reset_before_is_the_cho_course_form():
    cell = build_cell("gru", I, H, reset="before").double()
    x, (c_prev,) = torch.randn(B, I, dtype=torch.float64), _state(cell)
    W_ir, W_iz, W_in = cell.weight_ih.chunk(3)
    W_hr, W_hz, W_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    gamma_r = torch.sigmoid(x @ W_ir.T + b_ir + c_prev @ W_hr.T + b_hr)
    gamma_u = 1 - torch.sigmoid(x @ W_iz.T + b_iz + c_prev @ W_hz.T + b_hz)
    # c~ = tanh(Wc[gamma_r * c<t-1>, x<t>] + bc)
    W_c, b_c = torch.cat([W_hn, W_in], dim=1), b_in + b_hn
    c_tilde = torch.tanh(torch.cat([gamma_r * c_prev, x], dim=1) @ W_c.T + b_c)
    expected = gamma_u * c_tilde + (1 - gamma_u) * c_prev
    y, _ = cell(x, (c_prev,))
    torch.testing.assert_close(y, expected)
    after = build_cell("gru", I, H).double()
    after.load_state_dict(cell.state_dict())  # same weights load into either form
    assert not torch.allclose(after(x, (c_prev,))[0], y)  # and the forms really differ


def test_simple_gru_with_closed_update_gate_keeps_its_memory():
    cell = build_cell("gru_simple", I, H).double()
    with torch.no_grad():
        cell.weight_u.zero_()
        cell.bias_u.fill_(-50.0)  # gamma_u ~ 0: c<t> = c<t-1>
    x, (c_prev,) = torch.randn(B, I, dtype=torch.float64), _state(cell)
    torch.testing.assert_close(cell(x, (c_prev,))[0], c_prev)
    with torch.no_grad():
        cell.bias_u.fill_(50.0)  # gamma_u ~ 1: c<t> = c_tilde = tanh(Wc[c<t-1>, x<t>] + bc)
    c_tilde = torch.tanh(torch.cat([c_prev, x], 1) @ cell.weight_c.T + cell.bias_c)
    torch.testing.assert_close(cell(x, (c_prev,))[0], c_tilde)


def test_peephole_lstm_without_peepholes_is_the_lstm_and_with_them_follows_gers():
    peep = build_cell("peephole_lstm", I, H).double()
    lstm = build_cell("lstm", I, H).double()
    lstm.load_state_dict({k: v for k, v in peep.state_dict().items() if not k.startswith("w_c")})
    x, state = torch.randn(B, I, dtype=torch.float64), _state(peep)
    a_prev, c_prev = state
    gates = x @ peep.weight_ih.T + peep.bias_ih + a_prev @ peep.weight_hh.T + peep.bias_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f + peep.w_cf * c_prev) * c_prev + torch.sigmoid(i + peep.w_ci * c_prev) * torch.tanh(g)
    a = torch.sigmoid(o + peep.w_co * c) * torch.tanh(c)  # the output gate sees the new c<t>
    y, (a_new, c_new) = peep(x, state)
    torch.testing.assert_close((y, c_new), (a, c))
    assert not torch.allclose(y, lstm(x, state)[0])
    with torch.no_grad():
        for w in (peep.w_ci, peep.w_cf, peep.w_co):
            w.zero_()
    torch.testing.assert_close(peep(x, state), lstm(x, state))


def test_base_cell_forward_must_be_implemented():
    class Stepless(RecurrentCell):
        pass

    cell = Stepless(I, H)
    with pytest.raises(NotImplementedError, match="Stepless must implement forward"):
        cell(torch.zeros(B, I), cell.initial_state(B))
    with pytest.raises(CellError, match="cell 'Stepless' got unknown hparam 'x'; accepted hparams: none"):
        Stepless(I, H, x=1)


# --- the fast sequence paths: projection hooks and the hand-written backward ---------------

@pytest.mark.parametrize("name, hparams", [("peephole_lstm", {}), ("gru", {"reset": "before"}),
                                           ("gru", {"reset": "after"})])
def test_projection_hooks_compose_to_the_step(name, hparams):
    torch.manual_seed(0)
    cell = build_cell(name, I, H, **hparams).double()
    x, state = torch.randn(B, I, dtype=torch.float64), _state(cell)
    state = tuple(torch.randn_like(s) for s in state)
    y, new = cell.forward_projected(cell.input_projection(x), state)
    y_ref, new_ref = cell(x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(new, new_ref, rtol=0, atol=1e-12)
    assert cell.backends()[-2:] == ["sequence", "loop"]


@pytest.mark.parametrize("batch_sizes, last", [(None, None), ([3, 3, 2, 1, 1], [5, 3, 2])],
                         ids=["fixed", "variable"])
def test_gradcheck_of_the_peephole_lstms_hand_written_backward(batch_sizes, last):
    from toolkit.cells.fused import PeepholeLSTMSequence

    T, n, h = 5, 3, 4
    g = torch.Generator().manual_seed(0)
    shapes = [(T, n, 4 * h), (n, h), (n, h), (4 * h, h), (h,), (h,), (h,)]  # xp, h0, c0, W_hh, w_ci/f/o
    inputs = [torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]
    last = None if last is None else torch.tensor(last)
    assert torch.autograd.gradcheck(lambda *a: PeepholeLSTMSequence.apply(*a, batch_sizes, last), inputs)


class ProjectedOnlyCell(RecurrentCell):
    """A third-party-style cell that only splits its step: h<t> = tanh(W x<t> + b) * sigmoid(U h<t-1>)."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, hidden_size)
        self.rec = nn.Linear(hidden_size, hidden_size, bias=False)
        self.projected_steps = 0

    def input_projection(self, x):
        return torch.tanh(self.proj(x))

    def forward_projected(self, p_t, state):
        self.projected_steps += 1
        h = p_t * torch.sigmoid(self.rec(state[0]))
        return h, (h,)

    def forward(self, x_t, state):
        return self.forward_projected(self.input_projection(x_t), state)


def test_a_cell_that_declares_its_input_projection_gets_the_sequence_path_without_a_backward():
    torch.manual_seed(0)
    cell = ProjectedOnlyCell(I, H)
    assert cell.backends() == ["sequence", "loop"]
    x, h0 = torch.randn(B, 6, I), torch.randn(B, H)
    lengths = torch.tensor([6, 2, 4, 1])  # (B,)
    y, (h,) = cell.forward_sequence(x, (h0,), lengths)
    for b, n in enumerate(lengths.tolist()):  # each sequence's own last step, as if run alone
        state = (h0[b:b + 1],)
        for t in range(n):
            y_t, state = cell(x[b:b + 1, t], state)
            torch.testing.assert_close(y[b, t], y_t[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h[b], state[0][0], rtol=1e-5, atol=1e-5)
    assert cell.projected_steps > 0
