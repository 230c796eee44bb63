"""The built-in cells, registered through the ``toolkit.cells`` entry-point group
exactly like a third-party plugin.

Notation follows the course: ``a<t>`` / ``c<t>`` is the state, ``x<t>`` the input,
``gamma_u``, ``gamma_f``, ``gamma_o``, ``gamma_r`` the update, forget, output and
relevance (reset) gates, ``c_tilde`` the candidate. Cells with a ``native``
kernel keep torch's parameter names and layouts so the layer can run the fused
kernel on the very same Parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.cells.base import RecurrentCell, State
from toolkit.cells.fused import peephole_lstm_sequence
from toolkit.errors import CellError


class RNNCell(RecurrentCell):
    r"""An Elman RNN cell with tanh non-linearity (registered as ``rnn``).

    .. math::
        a^{<t>} = \tanh(W_{ax} x^{<t>} + b_{ih} + W_{aa} a^{<t-1>} + b_{hh})

    Args:
        input_size: features in ``x<t>``.
        hidden_size: features in ``a<t>``.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(a,)`` with ``a`` :math:`(B, H)`.
        - output: :math:`(B, H)` and the new state ``(a,)``.

    Maps onto torch's ``rnn_tanh`` kernel: ``weight_ih`` is :math:`W_{ax}` (H, I),
    ``weight_hh`` is :math:`W_{aa}` (H, H).
    """

    state_names = ("h",)
    native = "rnn_tanh"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (a_prev,) = state
        a = torch.tanh(F.linear(x_t, self.weight_ih, self.bias_ih)
                       + F.linear(a_prev, self.weight_hh, self.bias_hh))
        return a, (a,)


class SimpleGRUCell(RecurrentCell):
    r"""A GRU with the update gate only (registered as ``gru_simple``).

    .. math::
        \begin{array}{ll}
        \Gamma_u = \sigma(W_u [c^{<t-1>}, x^{<t>}] + b_u) \\
        \tilde{c}^{<t>} = \tanh(W_c [c^{<t-1>}, x^{<t>}] + b_c) \\
        c^{<t>} = \Gamma_u * \tilde{c}^{<t>} + (1 - \Gamma_u) * c^{<t-1>}
        \end{array}

    Args:
        input_size: features in ``x<t>``.
        hidden_size: features in ``c<t>``.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(c,)`` with ``c`` :math:`(B, H)`.
        - output: :math:`(B, H)` (the new ``c``) and the new state ``(c,)``.

    ``weight_u`` and ``weight_c`` are (H, H + I): columns for ``c<t-1>`` first.
    No native kernel.
    """

    state_names = ("h",)

    recurrent_weights = ()  # c<t-1> shares its matrices with x<t> (columns), so none is dropped whole

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_u = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))
        self.bias_u = nn.Parameter(torch.empty(hidden_size))
        self.weight_c = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))
        self.bias_c = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (c_prev,) = state
        cx = torch.cat([c_prev, x_t], dim=1)  # (B, H + I)
        gamma_u = torch.sigmoid(F.linear(cx, self.weight_u, self.bias_u))
        c_tilde = torch.tanh(F.linear(cx, self.weight_c, self.bias_c))
        c = gamma_u * c_tilde + (1 - gamma_u) * c_prev
        return c, (c,)


class GRUCell(RecurrentCell):
    r"""A gated recurrent unit with relevance gate (registered as ``gru``).

    .. math::
        \begin{array}{ll}
        \Gamma_r = \sigma(W_{ir} x^{<t>} + b_{ir} + W_{hr} c^{<t-1>} + b_{hr}) \\
        \Gamma_u = 1 - \sigma(W_{iz} x^{<t>} + b_{iz} + W_{hz} c^{<t-1>} + b_{hz}) \\
        \text{after:}\ \tilde{c}^{<t>} = \tanh(W_{in} x^{<t>} + b_{in}
                              + \Gamma_r * (W_{hn} c^{<t-1>} + b_{hn})) \\
        \text{before:}\ \tilde{c}^{<t>} = \tanh(W_{in} x^{<t>} + b_{in}
                              + W_{hn} (\Gamma_r * c^{<t-1>}) + b_{hn}) \\
        c^{<t>} = \Gamma_u * \tilde{c}^{<t>} + (1 - \Gamma_u) * c^{<t-1>}
        \end{array}

    torch's update gate ``z`` is the gate that *keeps* the old state, so the
    course's :math:`\Gamma_u` is ``1 - z``; the numbers are torch's exactly.

    Args:
        input_size: features in ``x<t>``.
        hidden_size: features in ``c<t>``.
        reset: ``"after"`` (default; torch / cuDNN form, maps onto the native
            ``gru`` kernel) or ``"before"`` (Cho / course form, :math:`\Gamma_r`
            applied to ``c<t-1>`` before the matmul; loop backend only). Both
            forms have the same parameters, so weights load into either.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(c,)`` with ``c`` :math:`(B, H)`.
        - output: :math:`(B, H)` and the new state ``(c,)``.

    Parameters are torch's: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H),
    ``bias_ih`` and ``bias_hh`` (3H,), gates in the order r, z, n.
    """

    state_names = ("h",)

    def __init__(self, input_size: int, hidden_size: int, reset: str = "after") -> None:
        super().__init__(input_size, hidden_size)
        if reset not in ("before", "after"):
            raise CellError(f"cell 'gru': reset must be 'before' or 'after', got {reset!r}")
        self.reset = reset
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    @property
    def native(self) -> str | None:  # type: ignore[override]
        return "gru" if self.reset == "after" else None

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, reset={self.reset!r}"

    def input_projection(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` (..., 3H): the part of the step that reads only the input."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.forward_projected(self.input_projection(x_t), state)

    def forward_projected(self, p_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step from the projected input ``p_t`` (B, 3H)."""
        (c_prev,) = state
        H = self.hidden_size
        i_r, i_z, i_n = p_t.chunk(3, dim=1)
        h_r, h_z = F.linear(c_prev, self.weight_hh[: 2 * H], self.bias_hh[: 2 * H]).chunk(2, dim=1)
        gamma_r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        W_hn, b_hn = self.weight_hh[2 * H:], self.bias_hh[2 * H:]
        if self.reset == "after":
            c_tilde = torch.tanh(i_n + gamma_r * F.linear(c_prev, W_hn, b_hn))
        else:
            c_tilde = torch.tanh(i_n + F.linear(gamma_r * c_prev, W_hn, b_hn))
        # torch's form of gamma_u * c_tilde + (1 - gamma_u) * c_prev with gamma_u = 1 - z
        c = (1 - z) * c_tilde + z * c_prev
        return c, (c,)


class LSTMCell(RecurrentCell):
    r"""A long short-term memory cell (registered as ``lstm``).

    .. math::
        \begin{array}{ll}
        \Gamma_u = \sigma(W_{ii} x^{<t>} + b_{ii} + W_{hi} a^{<t-1>} + b_{hi}) \\
        \Gamma_f = \sigma(W_{if} x^{<t>} + b_{if} + W_{hf} a^{<t-1>} + b_{hf}) \\
        \tilde{c}^{<t>} = \tanh(W_{ig} x^{<t>} + b_{ig} + W_{hg} a^{<t-1>} + b_{hg}) \\
        \Gamma_o = \sigma(W_{io} x^{<t>} + b_{io} + W_{ho} a^{<t-1>} + b_{ho}) \\
        c^{<t>} = \Gamma_f * c^{<t-1>} + \Gamma_u * \tilde{c}^{<t>} \\
        a^{<t>} = \Gamma_o * \tanh(c^{<t>})
        \end{array}

    Args:
        input_size: features in ``x<t>``.
        hidden_size: features in ``a<t>`` and ``c<t>``.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(a, c)``, each :math:`(B, H)`.
        - output: :math:`(B, H)` (``a<t>``) and the new state ``(a, c)``.

    Maps onto torch's ``lstm`` kernel: ``weight_ih`` (4H, I), ``weight_hh``
    (4H, H), ``bias_ih`` and ``bias_hh`` (4H,), gates in the order i, f, g, o.
    """

    state_names = ("h", "c")
    native = "lstm"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        a_prev, c_prev = state
        gates = F.linear(x_t, self.weight_ih, self.bias_ih) + F.linear(a_prev, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)  # torch's gate order
        gamma_u, gamma_f, gamma_o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c_tilde = torch.tanh(g)
        c = gamma_f * c_prev + gamma_u * c_tilde
        a = gamma_o * torch.tanh(c)
        return a, (a, c)


class PeepholeLSTMCell(RecurrentCell):
    r"""An LSTM whose gates also see the memory cell (registered as ``peephole_lstm``).

    Gers & Schmidhuber (2000), diagonal peepholes: the update and forget gates
    see ``c<t-1>``, the output gate sees the new ``c<t>``.

    .. math::
        \begin{array}{ll}
        \Gamma_u = \sigma(W_{ii} x^{<t>} + b_{ii} + W_{hi} a^{<t-1>} + b_{hi} + w_{ci} * c^{<t-1>}) \\
        \Gamma_f = \sigma(W_{if} x^{<t>} + b_{if} + W_{hf} a^{<t-1>} + b_{hf} + w_{cf} * c^{<t-1>}) \\
        \tilde{c}^{<t>} = \tanh(W_{ig} x^{<t>} + b_{ig} + W_{hg} a^{<t-1>} + b_{hg}) \\
        c^{<t>} = \Gamma_f * c^{<t-1>} + \Gamma_u * \tilde{c}^{<t>} \\
        \Gamma_o = \sigma(W_{io} x^{<t>} + b_{io} + W_{ho} a^{<t-1>} + b_{ho} + w_{co} * c^{<t>}) \\
        a^{<t>} = \Gamma_o * \tanh(c^{<t>})
        \end{array}

    Args:
        input_size: features in ``x<t>``.
        hidden_size: features in ``a<t>`` and ``c<t>``.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(a, c)``, each :math:`(B, H)`.
        - output: :math:`(B, H)` (``a<t>``) and the new state ``(a, c)``.

    ``weight_ih``/``weight_hh``/``bias_*`` as in :class:`LSTMCell`, plus the
    diagonal peephole weights ``w_ci``, ``w_cf``, ``w_co`` (H,). No native kernel.
    """

    state_names = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.w_ci = nn.Parameter(torch.empty(hidden_size))
        self.w_cf = nn.Parameter(torch.empty(hidden_size))
        self.w_co = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def input_projection(self, x: Tensor) -> Tensor:
        """``W_i x + b_ih + b_hh`` (..., 4H): the part of the step that reads only the input."""
        return F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.forward_projected(self.input_projection(x_t), state)

    def forward_sequence(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        """The whole sequence with a hand-written backward (:mod:`toolkit.cells.fused`)."""
        return peephole_lstm_sequence(self, x, state, lengths)

    def forward_projected(self, p_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step from the projected input ``p_t`` (B, 4H)."""
        a_prev, c_prev = state
        gates = p_t + F.linear(a_prev, self.weight_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        gamma_u = torch.sigmoid(i + self.w_ci * c_prev)
        gamma_f = torch.sigmoid(f + self.w_cf * c_prev)
        c_tilde = torch.tanh(g)
        c = gamma_f * c_prev + gamma_u * c_tilde
        gamma_o = torch.sigmoid(o + self.w_co * c)
        a = gamma_o * torch.tanh(c)
        return a, (a, c)
