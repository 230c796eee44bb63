"""The one abstraction: a recurrent cell computes one time step.

A plugin author writes only :meth:`RecurrentCell.forward` (one step). Everything
about time, batches, lengths, direction and depth is the job of
:class:`toolkit.layers.Recurrent`. Two optional speed hooks let the layer go
faster without changing a number:

- ``native``: the name of a fused torch kernel (``"rnn_tanh"``, ``"gru"``,
  ``"lstm"``) whose weights the cell maps onto exactly. Such a cell stores
  ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih`` (G*H,) and
  ``bias_hh`` (G*H,) in torch's gate order (LSTM i, f, g, o; GRU r, z, n), so the
  layer hands its own Parameters to the kernel and gradients reach them.
- ``forward_sequence(x, state, lengths) -> (y, state)``: a whole-sequence path
  (e.g. a parallel scan). ``x`` is (B, T, I) batch-first and always runs forward
  in time (the layer flips reversed sequences within their lengths); ``state`` is
  a tuple of (B, H) tensors; ``lengths`` is a (B,) int64 tensor on ``x``'s device
  or None. It returns ``y`` (B, T, H) and the state at each sequence's own last
  step. The layer zeroes ``y`` at padded steps itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from toolkit.errors import CellError

State = tuple[Tensor, ...]


class RecurrentCell(nn.Module):
    """One time step: x_t (B, input_size), state -> y_t (B, hidden_size), state.

    Args:
        input_size: the number of features in ``x_t``.
        hidden_size: the number of features in ``y_t`` and in every state tensor.
        **hparams: the cell's own keyword hyper-parameters (declared by name in the
            subclass's ``__init__``; :meth:`validate_hparams` checks them).
    """

    state_names: ClassVar[tuple[str, ...]] = ("h",)
    # A subclass may turn this into a property when the mapping depends on hparams.
    native: ClassVar[str | None] = None

    def __init__(self, input_size: int, hidden_size: int, **hparams: Any) -> None:
        super().__init__()
        for what, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise CellError(f"{type(self).__name__}: {what} must be a positive int, got {size!r}")
        if hparams:
            type(self).validate_hparams(hparams)
        self.input_size = input_size
        self.hidden_size = hidden_size

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x_t, state)")

    def initial_state(self, batch_size: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        """Zeros: one (B, H) tensor per name in ``state_names``."""
        return tuple(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
                     for _ in self.state_names)

    def reset_parameters(self) -> None:
        """torch's RNN initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def backends(self) -> list[str]:
        """The layer backends this cell supports, fastest first; ``loop`` always works."""
        names = []
        if self.native is not None:
            names.append("native")
        if callable(getattr(self, "forward_sequence", None)):
            names.append("sequence")
        return names + ["loop"]

    @classmethod
    def hparam_names(cls) -> list[str] | None:
        """The keyword hparams ``__init__`` accepts (None: it takes any ``**kwargs``)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
        if any(p.kind is p.VAR_KEYWORD for p in params) and cls.__init__ is not RecurrentCell.__init__:
            return None
        return [p.name for p in params
                if p.name not in ("input_size", "hidden_size")
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @classmethod
    def validate_hparams(cls, hparams: Mapping[str, Any], name: str | None = None) -> None:
        """Raise CellError naming the cell, every unknown key and the accepted ones."""
        accepted = cls.hparam_names()
        if accepted is None:
            return
        unknown = sorted(k for k in hparams if k not in accepted)
        if unknown:
            label = name or cls.__name__
            bad = ", ".join(repr(k) for k in unknown)
            ok = ", ".join(accepted) if accepted else "none"
            noun = "hparam" if len(unknown) == 1 else "hparams"
            raise CellError(f"cell '{label}' got unknown {noun} {bad}; accepted hparams: {ok}")
