r"""A layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", eqs. 20-22).

.. math::
    \begin{array}{ll}
    [i_t; f_t; g_t; o_t] = \mathrm{LN}(W_x x_t; \alpha_x, \beta_x)
                         + \mathrm{LN}(W_h h_{t-1}; \alpha_h, \beta_h) + b \\
    c_t = \sigma(f_t) \odot c_{t-1} + \sigma(i_t) \odot \tanh(g_t) \\
    h_t = \sigma(o_t) \odot \tanh(\mathrm{LN}(c_t; \alpha_c, \beta_c))
    \end{array}

where :math:`\mathrm{LN}(v; \alpha, \beta) = \alpha \odot (v - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`
with the mean :math:`\mu` and (biased) variance :math:`\sigma^2` taken over the features of
``v``: all 4H gate pre-activations at once for the input and recurrent terms, as in the
paper, and the H features of the memory cell. The state keeps the un-normalised
:math:`c_t`; only the output path sees :math:`\mathrm{LN}(c_t)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.cells import RecurrentCell, State


class LayerNormLSTMCell(RecurrentCell):
    r"""An LSTM with layer normalisation (registered as ``layernorm_lstm``).

    Args:
        input_size: features in ``x_t``.
        hidden_size: features in ``h_t`` and ``c_t``.
        forget_bias: initial value of the forget-gate part of ``b`` (1.0 keeps memory
            early in training, as is usual for LSTMs; 0.0 is the paper's plain init).
        eps: added to the variance inside every layer norm.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(h, c)``, each :math:`(B, H)`.
        - output: :math:`(B, H)` (``h_t``) and the new state ``(h, c)``.

    Parameters: ``weight_ih`` (4H, I) and ``weight_hh`` (4H, H) (gates i, f, g, o, like
    torch's LSTM), ``bias`` (4H,), and the gains / biases ``ln_x_weight``, ``ln_x_bias``,
    ``ln_h_weight``, ``ln_h_bias`` (4H,) and ``ln_c_weight``, ``ln_c_bias`` (H,).
    Backends: ``sequence`` (the toolkit's projected path: the input term for all steps at
    once, from :meth:`input_projection`) and ``loop``; no fused kernel normalises inside
    the recurrence.
    """

    state_names = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__(input_size, hidden_size)
        self.forget_bias = float(forget_bias)
        self.eps = float(eps)
        G = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        self.bias = nn.Parameter(torch.empty(G))
        self.ln_x_weight = nn.Parameter(torch.empty(G))
        self.ln_x_bias = nn.Parameter(torch.empty(G))
        self.ln_h_weight = nn.Parameter(torch.empty(G))
        self.ln_h_bias = nn.Parameter(torch.empty(G))
        self.ln_c_weight = nn.Parameter(torch.empty(hidden_size))
        self.ln_c_bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ~ U(-1/sqrt(H), 1/sqrt(H)) as in torch's LSTM; gains 1, LN biases 0; b = forget_bias on f."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        for gain in (self.ln_x_weight, self.ln_h_weight, self.ln_c_weight):
            nn.init.ones_(gain)
        for shift in (self.ln_x_bias, self.ln_h_bias, self.ln_c_bias):
            nn.init.zeros_(shift)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size] = self.forget_bias

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, forget_bias={self.forget_bias}, eps={self.eps}"

    def input_projection(self, x: Tensor) -> Tensor:
        """``LN(W_x x; alpha_x, beta_x) + b`` (..., 4H): the part of the step that reads only the input.

        The toolkit runs it for all time steps at once (one big matmul and one layer norm)."""
        G = 4 * self.hidden_size
        return F.layer_norm(F.linear(x, self.weight_ih), (G,), self.ln_x_weight, self.ln_x_bias, self.eps) + self.bias

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.forward_projected(self.input_projection(x_t), state)

    def forward_projected(self, p_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step from the projected input ``p_t`` (B, 4H)."""
        h_prev, c_prev = state
        G, H = 4 * self.hidden_size, self.hidden_size
        gates = p_t + F.layer_norm(F.linear(h_prev, self.weight_hh), (G,), self.ln_h_weight, self.ln_h_bias,
                                   self.eps)  # (B, 4H)
        # one sigmoid over all four gates (the g quarter is unused): fewer, larger ops per step
        sig_i, sig_f, _, sig_o = torch.sigmoid(gates).chunk(4, dim=1)  # each (B, H)
        c = torch.addcmul(sig_f * c_prev, sig_i, torch.tanh(gates[:, 2 * H:3 * H]))
        h = sig_o * torch.tanh(F.layer_norm(c, (H,), self.ln_c_weight, self.ln_c_bias, self.eps))
        return h, (h, c)
