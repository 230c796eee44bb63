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
- ``input_projection(x) -> p`` with ``forward_projected(p_t, state) -> (y_t, state)``:
  the step split into the part that reads only ``x_t`` (e.g. ``W_ih x_t + b``), which
  the layer then runs for all time steps in one big matmul, and the recurrent rest.
  They must compose to ``forward``: ``forward(x_t, s) == forward_projected(
  input_projection(x_t), s)``; ``input_projection`` maps (..., I) to (..., P) for any
  leading shape. A cell that defines both and no ``forward_sequence`` gets one
  (:func:`projected_sequence`, autograd does the backward), so it offers the
  ``sequence`` backend without writing anything else.

``recurrent_weights`` names the Parameters that multiply the previous state
(``("weight_hh",)`` by default): the layer's ``weight_drop`` drops those.

Hyper-parameters are keyword arguments of ``__init__`` with defaults: the
signature is their one home (a misspelt key is refused against it, and a plugin
cell's defaults fill its ``cell=<name>`` node in Hydra).
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
    # The Parameters that multiply the previous state (what the layer's weight_drop drops).
    recurrent_weights: ClassVar[tuple[str, ...]] = ("weight_hh",)

    def __init__(self, input_size: int, hidden_size: int, **hparams: Any) -> None:
        super().__init__()
        for what, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise CellError(f"{type(self).__name__}: {what} must be a positive int, got {size!r}")
        if hparams:
            type(self).validate_hparams(hparams)
        self.input_size = input_size
        self.hidden_size = hidden_size

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The projection hooks alone give a whole-sequence path (see the module docstring).
        if (callable(getattr(cls, "input_projection", None)) and callable(getattr(cls, "forward_projected", None))
                and getattr(cls, "forward_sequence", None) is None):
            cls.forward_sequence = projected_sequence  # type: ignore[attr-defined]

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
    def hparam_defaults(cls) -> dict[str, Any]:
        """The defaults ``__init__`` declares for its hparams, those a config file can hold
        (numbers, strings, booleans, None and lists of them): what ``cell=<name>`` shows in Hydra."""
        params = inspect.signature(cls.__init__).parameters
        out = {}
        for name in cls.hparam_names() or []:
            default = params[name].default
            if isinstance(default, tuple):
                default = list(default)
            items = default if isinstance(default, list) else [default]
            if default is not inspect.Parameter.empty and all(
                    v is None or isinstance(v, (bool, int, float, str)) for v in items):
                out[name] = default
        return out

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


def projected_sequence(cell: RecurrentCell, x: Tensor, state: State,
                       lengths: Tensor | None) -> tuple[Tensor, State]:
    """``forward_sequence`` of a cell with the projection hooks: ``input_projection`` once
    for all T steps (one (B * T, I) matmul instead of T small ones), then
    ``forward_projected`` in a loop; past a sequence's end its state stays as it was.
    Autograd does the backward.

    Shape: x (B, T, I), state (B, H) each, lengths (B,) or None -> y (B, T, H), state.
    """
    # unbind, not p[:, t]: its backward stacks the T step gradients once, where T slices
    # would each scatter into a zero (B, T, P) tensor
    steps = cell.input_projection(x).unbind(1)  # T x (B, P)
    T = x.size(1)
    state = tuple(state)
    # steps before the shortest sequence ends need no mask
    full = T if lengths is None else int(lengths.min())
    outs = []
    for t, p_t in enumerate(steps):
        y, new = cell.forward_projected(p_t, state)
        if t < full:
            state = tuple(new)
        else:
            m = (lengths > t).unsqueeze(-1)  # (B, 1)
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state))
        outs.append(y)
    return torch.stack(outs, dim=1), state  # (B, T, H)
