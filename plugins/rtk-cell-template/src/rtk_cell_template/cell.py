r"""An Elman RNN written plainly: the cell to replace with your own.

.. math::
    h_t = \tanh(W_x x_t + b_x + W_h h_{t-1} + b_h)

Everything about time, batches, lengths (padding), direction and depth is the
job of ``toolkit.layers.Recurrent``; a cell computes one step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toolkit.cells import RecurrentCell, State


class TemplateRNNCell(RecurrentCell):
    r"""An Elman RNN cell, tanh (registered as ``template_rnn``).

    Args:
        input_size: features in ``x_t``.
        hidden_size: features in ``h_t``.
        Your own hyper-parameters go here as keyword arguments with defaults; they
        become ``+cell.<name>=…`` on the ``rtk train`` command line.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(h,)`` with ``h`` :math:`(B, H)`.
        - output: :math:`(B, H)` and the new state ``(h,)``.
    """

    # One name per state tensor, each (B, hidden_size); an LSTM-like cell has ("h", "c").
    state_names = ("h",)

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)  # checks both sizes
        self.input_to_hidden = nn.Linear(input_size, hidden_size)  # W_x, b_x
        self.hidden_to_hidden = nn.Linear(hidden_size, hidden_size)  # W_h, b_h
        self.reset_parameters()  # every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), from torch's global RNG

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h_prev,) = state  # (B, H)
        h = torch.tanh(self.input_to_hidden(x_t) + self.hidden_to_hidden(h_prev))  # (B, H)
        return h, (h,)

    # Optional speed hooks (delete what you do not use; docs/plugins.md explains both):
    #
    # native = "rnn_tanh"   # only if your parameters are exactly torch's weight_ih, weight_hh,
    #                       # bias_ih, bias_hh for that fused kernel ("rnn_tanh", "gru", "lstm")
    #
    # def forward_sequence(self, x, state, lengths):
    #     """All steps at once (e.g. a parallel scan): x (B, T, I) forward in time, lengths (B,) or None.
    #     Return y (B, T, H) and the state at each sequence's own last step."""
