r"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"), step by step and as a log-space scan.

.. math::
    \begin{array}{ll}
    z_t = \sigma(W_z x_t + b_z) \\
    \tilde{h}_t = g(W_h x_t + b_h), \quad g(v) = v + 0.5 \text{ if } v \ge 0 \text{ else } \sigma(v) \\
    h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde{h}_t
    \end{array}

No gate sees ``h_{t-1}``, so ``h_t = a_t * h_{t-1} + b_t`` with ``a_t = 1 - z_t`` in (0, 1)
and ``b_t = z_t * h~_t > 0`` known for every t at once. Unrolled,

.. math::
    h_t = A_t h_0 + A_t \sum_{s \le t} b_s / A_s, \qquad A_t = \prod_{r \le t} a_r,

which :meth:`MinGRUCell.forward_sequence` computes in log space (Heinsen 2023):
``log A = cumsum(log a)`` and ``log(sum b_s / A_s) = logcumsumexp(log b - log A)``.
Only positive quantities enter the logarithms, so the initial state ``h_0`` may be
any real number (zero by default): its term ``A_t h_0`` stays linear. The paper's
log-space code instead feeds ``g(h_0)`` to the scan; here both paths use ``h_0`` as
given, so the step and the scan compute the same function and a state can be
carried from one chunk of a sequence to the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.cells import RecurrentCell, State


def g(v: Tensor) -> Tensor:
    """The paper's positive activation: v + 0.5 for v >= 0, sigmoid(v) below (continuous at 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """log(g(v)) without taking the log of anything that could be <= 0."""
    return torch.where(v >= 0, torch.log(v.clamp(min=0) + 0.5), F.logsigmoid(v))


class MinGRUCell(RecurrentCell):
    r"""minGRU: a GRU whose gates see only the input (registered as ``mingru``).

    Args:
        input_size: features in ``x_t``.
        hidden_size: features in ``h_t``.

    Shape:
        - x_t: :math:`(B, H_{in})`; state: ``(h,)`` with ``h`` :math:`(B, H)`.
        - output: :math:`(B, H)` (the new ``h``) and the new state ``(h,)``.

    Parameters: ``linear_z`` and ``linear_h``, each ``nn.Linear(input_size, hidden_size)``.
    Backends: ``sequence`` (the log-space scan; ``backend=auto`` picks it) and ``loop``.
    """

    state_names = ("h",)
    # Steps per log-space scan. float32 rounds log A = cumsum(log a) to ~1e-7 of its size,
    # and that size grows with the scan's length: at T = 4096 in one piece outputs drift
    # by 9e-4; in chunks of 32 by ~3e-6 (gradients ~1e-4), for ~25% more time than 64.
    chunk_size = 32

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.linear_z = nn.Linear(input_size, hidden_size)
        self.linear_h = nn.Linear(input_size, hidden_size)
        self.reset_parameters()

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (h_prev,) = state
        z = torch.sigmoid(self.linear_z(x_t))  # (B, H)
        h_tilde = g(self.linear_h(x_t))  # (B, H)
        h = (1 - z) * h_prev + z * h_tilde
        return h, (h,)

    def forward_sequence(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        """All T steps at once: x (B, T, I) forward in time -> y (B, T, H), the state at each own last step."""
        (h0,) = state  # (B, H)
        if lengths is not None:
            # padded steps hold whatever the caller left there; zero them so no inf/nan can arise there
            valid = torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]  # (B, T)
            x = torch.where(valid.unsqueeze(-1), x, 0.0)
        k = self.linear_z(x)  # (B, T, H)
        log_a = -F.softplus(k)  # log(1 - z)
        log_b = -F.softplus(-k) + log_g(self.linear_h(x))  # log(z * h~)
        h = _chunked_scan(log_a, log_b, h0, self.chunk_size)  # (B, T, H)
        if lengths is None:
            last = h[:, -1]
        else:
            last = h.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, h.size(-1))).squeeze(1)  # (B, H)
        return h, (last,)


def _chunked_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int) -> Tensor:
    """h_t = a_t h_{t-1} + b_t for all t, from log a, log b (B, T, H) and h0 (B, H).

    Each chunk of ``chunk`` steps is one Heinsen scan from a zero state (all chunks at
    once); a loop over the T / chunk chunks then adds each chunk's share of the state it
    starts from: h = A * h_start + P inside a chunk.
    """
    B, T, H = log_a.shape
    chunk = min(chunk, T)
    n = -(-T // chunk)  # chunks, the last one padded
    pad = n * chunk - T
    if pad:  # log a = 0, log b = 0 after the end: finite, and the scan is causal, so harmless
        log_a = F.pad(log_a, (0, 0, 0, pad))
        log_b = F.pad(log_b, (0, 0, 0, pad))
    log_a = log_a.view(B, n, chunk, H)
    log_b = log_b.view(B, n, chunk, H)
    log_A = torch.cumsum(log_a, dim=2)  # (B, n, chunk, H), <= 0
    A = torch.exp(log_A)
    P = torch.exp(log_A + torch.logcumsumexp(log_b - log_A, dim=2))  # each chunk from a zero state
    outs = []
    h_start = h0  # (B, H)
    for j in range(n):
        h_j = A[:, j] * h_start.unsqueeze(1) + P[:, j]  # (B, chunk, H)
        outs.append(h_j)
        h_start = h_j[:, -1]
    return torch.cat(outs, dim=1)[:, :T]  # (B, T, H)
