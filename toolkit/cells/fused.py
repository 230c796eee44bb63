"""Whole-sequence paths with a hand-written backward, for cells no fused torch kernel computes.

Autograd over a Python time loop records ~15 small ops per step and replays them
one by one backwards; here the forward saves the gate activations of every step
in a few (T, B, *) buffers, and the backward walks time once with a handful of
large-ish ops per step, leaving the weight gradients to one big matmul at the end.
The input projection ``x W_ih^T + b`` stays outside, in autograd, as one matmul
over all steps.

Layout inside: time-major (T, B, *), the batch sorted by length, longest first, so
the sequences still running at step t are the first ``batch_sizes[t]`` rows (as in a
PackedSequence): finished sequences cost nothing and their state stays as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolkit.cells.base import State


class SortedBatch:
    """Sort a batch by length (longest first) and back; ``batch_sizes[t]``: rows running at step t."""

    def __init__(self, lengths: Tensor | None, B: int, T: int) -> None:
        self.order = self.inverse = None
        self.batch_sizes: list[int] | None = None
        self.last: Tensor | None = None  # each sorted row's length, the index of its final state
        if lengths is not None and int(lengths.min()) < T:
            sorted_lengths, self.order = torch.sort(lengths, descending=True, stable=True)
            self.inverse = torch.argsort(self.order)
            steps = torch.arange(T, device=lengths.device)
            self.batch_sizes = (sorted_lengths[None, :] > steps[:, None]).sum(1).tolist()
            self.last = sorted_lengths

    def sort(self, t: Tensor, dim: int = 0) -> Tensor:
        return t if self.order is None else t.index_select(dim, self.order)

    def unsort(self, t: Tensor, dim: int = 0) -> Tensor:
        return t if self.inverse is None else t.index_select(dim, self.inverse)


class PeepholeLSTMSequence(torch.autograd.Function):
    """The peephole LSTM over a whole sorted, time-major sequence (see ``PeepholeLSTMCell``).

    Inputs: xp (T, B, 4H) = x W_ih^T + b_ih + b_hh, h0 and c0 (B, H), weight_hh (4H, H),
    w_ci, w_cf, w_co (H,), batch_sizes (list of T ints, non-increasing) or None, last
    (B,) each row's length or None. Outputs: hs (T, B, H) (the a<t>), hT and cT (B, H).
    """

    @staticmethod
    def forward(ctx, xp: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, w_ci: Tensor, w_cf: Tensor,
                w_co: Tensor, batch_sizes: list[int] | None, last: Tensor | None):
        T, B, G = xp.shape
        H = G // 4
        # Buffers hold every step; rows of finished sequences are never written, so zeros
        # there keep the weight-gradient sums below clean.
        new = xp.new_zeros if batch_sizes is not None else xp.new_empty
        hs, cs = new(T + 1, B, H), new(T + 1, B, H)  # a<t>, c<t>; index 0 is the initial state
        acts = new(T, B, 4, H)  # gamma_u, gamma_f, c_tilde, gamma_o
        tanh_c = new(T, B, H)
        hs[0], cs[0] = h0, c0
        w_uf = torch.stack([w_ci, w_cf])  # (2, H)
        w_t = weight_hh.t()
        for t in range(T):
            n = B if batch_sizes is None else batch_sizes[t]
            c_prev, c, a = cs[t, :n], cs[t + 1, :n], acts[t, :n]
            z = torch.addmm(xp[t, :n], hs[t, :n], w_t).view(n, 4, H)  # (n, 4, H) pre-activations
            z[:, :2].addcmul_(w_uf, c_prev.unsqueeze(1))  # the peepholes on c<t-1>
            torch.sigmoid(z[:, :2], out=a[:, :2])
            torch.tanh(z[:, 2], out=a[:, 2])
            torch.mul(a[:, 1], c_prev, out=c).addcmul_(a[:, 0], a[:, 2])  # c = gamma_f c<t-1> + gamma_u c~
            torch.sigmoid(z[:, 3].addcmul_(w_co, c), out=a[:, 3])  # the output gate sees c<t>
            torch.mul(a[:, 3], torch.tanh(c, out=tanh_c[t, :n]), out=hs[t + 1, :n])
        if last is None:
            hT, cT = hs[T].clone(), cs[T].clone()
        else:
            rows = torch.arange(B, device=xp.device)
            hT, cT = hs[last, rows], cs[last, rows]
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(hs, cs, acts, tanh_c, weight_hh, w_ci, w_cf, w_co)
        return hs[1:], hT, cT

    @staticmethod
    def backward(ctx, d_hs: Tensor, d_hT: Tensor, d_cT: Tensor):
        hs, cs, acts, tanh_c, weight_hh, w_ci, w_cf, w_co = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        T, B, _, H = acts.shape
        dz = acts.new_zeros(T, B, 4, H) if batch_sizes is not None else acts.new_empty(T, B, 4, H)
        # A finished row's running gradient waits untouched until the step its sequence
        # ended at, where it meets the gradient of that row's final state.
        dh, dc = d_hT.clone(), d_cT.clone()
        w_uf = torch.stack([w_ci, w_cf])  # (2, H)
        for t in range(T - 1, -1, -1):
            n = B if batch_sizes is None else batch_sizes[t]
            a, d, th = acts[t, :n], dz[t, :n], tanh_c[t, :n]
            gamma_o = a[:, 3]
            g_h = dh[:n] + d_hs[t, :n]  # dL/da<t>
            # a = gamma_o tanh(c):  d(pre o) = g_h tanh(c) sigma'
            torch.mul(g_h, th, out=d[:, 3]).mul_(gamma_o - gamma_o * gamma_o)
            # dL/dc<t>: from the next step, through tanh, and through the output gate's peephole
            g_c = (g_h * gamma_o).mul_(1 - th * th).add_(dc[:n]).addcmul_(d[:, 3], w_co)
            # c = gamma_f c<t-1> + gamma_u c~: the u and f pre-activations together
            uf = a[:, :2]
            torch.mul(torch.stack([a[:, 2], cs[t, :n]], 1), (uf - uf * uf).mul_(g_c.unsqueeze(1)), out=d[:, :2])
            torch.mul(g_c, a[:, 0], out=d[:, 2]).mul_(1 - a[:, 2] * a[:, 2])
            dc[:n] = (g_c * a[:, 1]).add_((d[:, :2] * w_uf).sum(1))
            dh[:n] = torch.mm(d.reshape(n, 4 * H), weight_hh)
        dz = dz.view(T, B, 4 * H)
        d_weight_hh = torch.mm(dz.reshape(T * B, 4 * H).t(), hs[:-1].reshape(T * B, H))
        d_w_uf = (dz[..., :2 * H].view(T, B, 2, H) * cs[:-1].unsqueeze(2)).sum((0, 1))  # (2, H)
        d_w_co = (dz[..., 3 * H:] * cs[1:]).sum((0, 1))
        return dz, dh, dc, d_weight_hh, d_w_uf[0], d_w_uf[1], d_w_co, None, None


def peephole_lstm_sequence(cell, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
    """``forward_sequence`` of ``PeepholeLSTMCell``: x (B, T, I) -> y (B, T, H), (a, c) at each own end."""
    B, T, _ = x.shape
    batch = SortedBatch(lengths, B, T)
    xp = cell.input_projection(batch.sort(x).transpose(0, 1))  # (T, B, 4H), one matmul for all steps
    h0, c0 = (batch.sort(s) for s in state)
    hs, hT, cT = PeepholeLSTMSequence.apply(xp, h0, c0, cell.weight_hh, cell.w_ci, cell.w_cf, cell.w_co,
                                            batch.batch_sizes, batch.last)
    y = batch.unsort(hs.transpose(0, 1))  # (B, T, H)
    return y, (batch.unsort(hT), batch.unsort(cT))
