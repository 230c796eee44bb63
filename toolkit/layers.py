"""Recurrent: the layer that owns time, batches, lengths, depth and direction.

A cell computes one step; this layer runs it over a padded batch, stacks
``num_layers`` of them, runs a reverse direction when asked, and picks a
backend. Every backend gives the same numbers (tests hold them to 1e-5), and
the state_dict is the same whatever the backend, so weights saved under one
load under another.

Backends:
- ``loop``: a Python loop over time calling ``cell.forward``; always available.
- ``native``: torch's fused kernel (``torch._VF.lstm`` / ``gru`` / ``rnn_tanh``,
  i.e. cuDNN on GPU, oneDNN / ATen on CPU), fed the cells' own Parameters: one
  call for the whole stack (both directions in it), or one per layer when dropout
  between layers is on in training. With ``lengths`` the batch is packed once,
  stays packed between layers and is unpacked at the end: no PackedSequence ever
  leaves the layer.
- ``sequence``: the cell's ``forward_sequence`` (e.g. a parallel scan, a hand-written
  whole-sequence backward, or the projected path of ``input_projection`` /
  ``forward_projected``; see ``toolkit.cells.base``).
- ``auto``: native if the cell maps onto a kernel, else sequence, else loop.

Lengths: every length must be in 1..T. An empty sequence has no last token to
start the reverse direction from, and the fused kernels reject it, so it is a
ValueError rather than a silent special case.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from toolkit.cells.base import RecurrentCell, State
from toolkit.cells.registry import build_cell
from toolkit.errors import CellError

log = logging.getLogger("toolkit.layers")
BACKENDS = ("auto", "native", "sequence", "loop")


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p),
    the distribution of ``F.dropout``. On the CPU the mask is drawn as U(0, 1) >= p: torch's
    CPU ``bernoulli_``, which ``F.dropout`` draws with, takes two to three times as long as
    ``rand`` (``python -m benchmarks --only "training step"``); on other devices it is
    ``F.dropout``'s own kernel. The mask is drawn from the default generator on a tensor of
    x's shape, so a seed fixes it like any other draw (a different stream from ``F.dropout``'s)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training=True)
    keep = torch.rand(x.shape, device=x.device) >= p  # float32 uniforms whatever x's dtype
    return x * keep * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` with the toolkit's ``dropout`` (the same distribution, a faster CPU draw)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


_LOGGED: set[tuple[str, str]] = set()  # (cell, backend) choices already logged by "auto"


class Recurrent(nn.Module):
    """A stack of recurrent cells over a padded batch.

    Args:
        cell: a registered cell name (see ``toolkit.cells.available_cells()``).
        input_size: features in ``x``.
        hidden_size: features per direction in the output and in each state tensor.
        num_layers: stacked layers; layer l > 0 reads the H * D outputs of layer l - 1.
        bidirectional: also run each layer right to left (from each sequence's own
            last token) and concatenate the two directions' outputs.
        dropout: dropout on the outputs of every layer but the last, training only.
        weight_drop: DropConnect on the recurrent matrices (each cell's ``recurrent_weights``,
            ``weight_hh`` for the built-ins), training only: one mask per forward call,
            shared by every time step (Merity et al. 2018, AWD-LSTM). The weight is dropped,
            not the step, so the fused kernel still runs.
        backend: ``auto`` | ``native`` | ``sequence`` | ``loop``.
        batch_first: ``x`` and ``y`` are (B, T, *) when True, else (T, B, *).
        **cell_hparams: passed to the cell (checked against its ``__init__``).

    Shape:
        - x: (B, T, I) (or (T, B, I)); lengths: (B,) int, each in 1..T, or None
          for all T; state: None (zeros) or a tuple with one (L * D, B, H) tensor
          per name in ``state_names``, indexed ``layer * D + direction`` like
          torch's ``h_0`` / ``c_0``.
        - y: (B, T, H * D), exactly zero at padded steps; final state in the
          same layout as ``state``, each sequence's taken at its own last step.

    State layout (what ``state`` takes and the final state returns): a tuple in the
    order of ``state_names`` (``("h",)``; LSTMs ``("h", "c")``); in each tensor, row
    ``layer * D + direction`` holds that layer's state, layer 0 the one reading ``x``,
    direction 0 left to right and 1 right to left (its final state is the one after
    reading back to step 0). To carry state across calls (a stream, truncated BPTT),
    pass the returned state to the next call: for a unidirectional layer, chunks fed
    this way give the same outputs as the whole sequence at once.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, backend: str = "auto",
                 batch_first: bool = True, weight_drop: float = 0.0, **cell_hparams: Any) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= weight_drop < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1), got {weight_drop}")
        self.cell_name = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        self.weight_drop = float(weight_drop)
        self._dropping = False  # inside the weight-dropped call of forward
        self.batch_first = batch_first
        self.cell_hparams = dict(cell_hparams)
        D = self.num_directions
        self.cells = nn.ModuleList(
            build_cell(cell, input_size if layer == 0 else hidden_size * D, hidden_size, **cell_hparams)
            for layer in range(num_layers) for _ in range(D))  # index layer * D + d
        self.backend = self._resolve_backend(backend)
        if weight_drop > 0:
            missing = [n for n in self.cells[0].recurrent_weights if not hasattr(self.cells[0], n)]
            if not self.cells[0].recurrent_weights or missing:
                raise CellError(f"cell '{cell}' names no recurrent weight to drop (recurrent_weights="
                                f"{self.cells[0].recurrent_weights!r}), so weight_drop cannot apply to it")

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.cells[0].state_names)

    def extra_repr(self) -> str:
        return (f"cell={self.cell_name!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, backend={self.backend!r}")

    def _resolve_backend(self, backend: str) -> str:
        cell: RecurrentCell = self.cells[0]
        available = cell.backends()
        if backend not in BACKENDS:
            raise CellError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
        if backend == "auto":
            chosen = available[0]
            if (self.cell_name, chosen) not in _LOGGED:
                _LOGGED.add((self.cell_name, chosen))
                log.info("Recurrent(cell=%r): backend auto -> %s", self.cell_name, chosen)
            return chosen
        if backend not in available:
            raise CellError(f"cell '{self.cell_name}' has no {backend} backend; "
                            f"its backends: {', '.join(available)}")
        if backend == "native" and cell.native not in ("rnn_tanh", "gru", "lstm"):
            raise CellError(f"cell '{self.cell_name}' names unknown native kernel {cell.native!r}; "
                            "known: rnn_tanh, gru, lstm")
        return backend

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, lengths: Tensor | None = None, state: State | Tensor | None = None,
                *, final_state: bool = True) -> tuple[Tensor, State | None]:
        """Run the stack over x; returns (y, final state), see the class docstring.

        ``final_state=False`` says the caller reads y only: the final state comes back as None,
        and on the CPU, where autograd records (training), the ``native`` backend then runs a batch
        with lengths padded rather than packed (each direction its own kernel call, the reverse one
        over each sequence reversed within its own length), whose forward and backward torch's CPU
        kernels mostly run faster than the packed batch's (up to 2.7 times; how much depends on
        the CPU, and a deep bidirectional vanilla RNN can lose). Without autograd (validation,
        prediction) the packed batch is the faster one and is run. ``python -m benchmarks``
        measures both (the "output only" rows). y is the same either way."""
        if self.weight_drop > 0 and self.training and not self._dropping:
            # the same forward with each recurrent matrix swapped for a dropped copy; the
            # Parameters themselves (and the state_dict) are untouched, gradients reach them
            dropped = {f"cells.{i}.{name}": F.dropout(getattr(cell, name), self.weight_drop)
                       for i, cell in enumerate(self.cells) for name in cell.recurrent_weights}
            self._dropping = True
            try:
                return torch.func.functional_call(self, dropped, (x, lengths, state), {"final_state": final_state})
            finally:
                self._dropping = False
        if not self.batch_first:
            x = x.transpose(0, 1)
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise ValueError(f"Recurrent expects x of shape (B, T, {self.input_size}) "
                             f"(batch_first={self.batch_first}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        lengths = self._check_lengths(lengths, B, T)
        state = self._check_state(state, x)
        if (self.backend == "native" and lengths is not None and not final_state and x.device.type == "cpu"
                and torch.is_grad_enabled()):
            y, final = self._forward_native_padded(x, lengths, state), None
        elif self.backend == "native":
            y, final = self._forward_native(x, lengths, state)
        else:
            y, final = self._forward_stepwise(x, lengths, state)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return y, (final if final_state else None)

    def _check_lengths(self, lengths: Tensor | None, B: int, T: int) -> Tensor | None:
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an int tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"every length must be in 1..{T} (the padded length); got min {lo}, max {hi}")
        return lengths.long()

    def _check_state(self, state: State | Tensor | None, x: Tensor) -> State:
        B = x.size(0)
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if state is None:
            return tuple(x.new_zeros(shape) for _ in self.state_names)
        if isinstance(state, Tensor):
            state = (state,)
        state = tuple(state)
        if len(state) != len(self.state_names) or any(s.shape != shape for s in state):
            got = [tuple(s.shape) for s in state]
            raise ValueError(f"state must be {len(self.state_names)} tensor(s) {self.state_names} "
                             f"of shape {shape}, got {got}")
        return state

    def _dropout_between_layers(self, y: Tensor, layer: int) -> Tensor:
        # Same call on the same contiguous (B, T, H * D) layout for every backend, so the
        # RNG draws the same mask (the native kernel's batch_first output is a transposed
        # view, and dropout draws in memory order).
        if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
            y = dropout(y.contiguous(), self.dropout)
        return y

    # ------------------------------------------------------------ loop/sequence
    def _forward_stepwise(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        lengths = None if lengths is None else lengths.to(x.device)
        mask, rev_index = _padding(lengths, x.size(1))
        finals: list[State] = []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = layer * self.num_directions + d
                y, s = self._run_cell(self.cells[i], d, inp, tuple(s[i] for s in state), lengths, mask, rev_index,
                                      sequence=self.backend == "sequence")
                outs.append(y)
                finals.append(tuple(s))
            y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (B, T, H * D)
            inp = self._dropout_between_layers(y, layer)
        final = tuple(torch.stack([f[k] for f in finals]) for k in range(len(self.state_names)))
        return y, final

    @staticmethod
    def _run_cell(cell: RecurrentCell, direction: int, x: Tensor, state: State, lengths: Tensor | None,
                  mask: Tensor | None, rev_index: Tensor | None, sequence: bool = False,
                  states: list[State] | None = None) -> tuple[Tensor, State]:
        """One cell over x (B, T, I) in its direction: the cell's whole-sequence path or the time loop."""
        xi = x if direction == 0 else _flip(x, rev_index)
        if sequence:
            y, s = cell.forward_sequence(xi, state, lengths)
            if mask is not None:
                y = torch.where(mask, y, 0.0)
        else:
            y, s = _time_loop(cell, xi, state, mask, states)
        return (y if direction == 0 else _flip(y, rev_index)), s

    # ------------------------------------------------------------ the step API
    def run_cell(self, layer: int, direction: int, x: Tensor, lengths: Tensor | None = None,
                 state: State | None = None, *, cell: RecurrentCell | None = None,
                 keep_states: bool = False) -> tuple[Tensor, State, list[State]]:
        """One cell of the stack over a whole sequence, step by step (the ``loop`` backend's numbers).

        Args:
            layer: which layer of the stack (0 reads the input).
            direction: which direction of that layer (1 reads each sequence from its own
                last step back to step 0).
            x: (B, T, I) that layer's input, batch first whatever ``batch_first`` says.
            lengths: (B,) or None; checked as forward checks them.
            state: one (B, H) tensor per state name, or None for the cell's zeros.
            cell: run this module in the cell's place (e.g. a float64 copy), same layout.
            keep_states: also return the state the cell computed at each step.

        Returns:
            y (B, T, H) in x's time order, exactly zero at padded steps; the final state
            (each sequence's at its own last step); with ``keep_states`` the list, in the
            order the cell ran, of the state each step computed (before padded steps
            freeze it), else an empty list. The tensors keep their autograd graph, so
            a loss on y can be differentiated with respect to each step's state.
        """
        B, T, _ = x.shape
        lengths = self._check_lengths(lengths, B, T)
        cell = self.cells[layer * self.num_directions + direction] if cell is None else cell
        if state is None:
            state = cell.initial_state(B, x.device, x.dtype)
        lengths = None if lengths is None else lengths.to(x.device)
        mask, rev_index = _padding(lengths, T)
        states: list[State] = []
        y, final = self._run_cell(cell, direction, x, tuple(state), lengths, mask, rev_index,
                                  states=states if keep_states else None)
        return y, final, states

    def layer_input(self, x: Tensor, lengths: Tensor | None, layer: int) -> Tensor:
        """What layer ``layer`` reads: x (B, T, I) run through the layers below it as forward runs
        them (dropout between layers included in training), (B, T, H * D); x itself for layer 0."""
        lengths = self._check_lengths(lengths, x.size(0), x.size(1))
        lengths = None if lengths is None else lengths.to(x.device)
        mask, rev_index = _padding(lengths, x.size(1))
        inp = x
        for below in range(layer):
            outs = []
            for d in range(self.num_directions):
                cell = self.cells[below * self.num_directions + d]
                outs.append(self._run_cell(cell, d, inp, cell.initial_state(x.size(0), x.device, x.dtype),
                                           lengths, mask, rev_index)[0])
            inp = self._dropout_between_layers(torch.cat(outs, -1), below)  # (B, T, H * D)
        return inp

    def step(self, x_t: Tensor, state: State | Tensor | None = None) -> tuple[Tensor, State]:
        """One time step through the whole stack, left to right: x_t (B, I), state as forward's
        (None: zeros) -> y_t (B, H) and the new state. Calling it over t = 0 .. T-1 gives forward's
        outputs and final state (in eval mode; in training each step draws its own dropout
        masks). A bidirectional layer needs the whole sequence, so it has no step.
        """
        if self.bidirectional:
            raise ValueError("Recurrent.step runs left to right; a bidirectional layer needs the whole sequence")
        if x_t.dim() != 2 or x_t.size(-1) != self.input_size:
            raise ValueError(f"Recurrent.step expects x_t of shape (B, {self.input_size}), got {tuple(x_t.shape)}")
        state = self._check_state(state, x_t)
        new: list[State] = []
        inp = x_t
        for layer in range(self.num_layers):
            y, s = self.cells[layer](inp, tuple(st[layer] for st in state))
            new.append(tuple(s))
            inp = self._dropout_between_layers(y[:, None], layer)[:, 0]  # (B, H)
        return inp, tuple(torch.stack([n[k] for n in new]) for k in range(len(self.state_names)))

    # ------------------------------------------------------------------- native
    def _forward_native_padded(self, x: Tensor, lengths: Tensor, state: State) -> Tensor:
        """The native kernels over the padded batch, no packing; the output only.

        Left to right, a sequence's real steps come before its padding, so the kernel's outputs
        there are exact whatever the padding holds. Right to left, each layer's input is
        reversed within each sequence's own length (padding stays at the end) and run by the
        reverse cell alone, and its output reversed back. Padded steps are zeroed at the end.
        The final state is not available this way: the kernel's is the one after the padding."""
        T = x.size(1)
        mask, rev_index = _padding(lengths.to(x.device), T)
        if self.num_directions == 1:  # the unpacked call, padding and all
            y, _ = self._forward_native(x, None, state)
            return torch.where(mask, y, 0.0)
        low = _cpu_autocast_dtype(x) if self.cells[0].native == "lstm" else None
        inp = x if low is None else x.to(low)
        for layer in range(self.num_layers):
            outs = []
            for d in range(2):
                i = layer * 2 + d
                y = self._kernel(i, i + 1, inp if d == 0 else _flip(inp, rev_index), state, low, False)[0]
                outs.append(y if d == 0 else _flip(y, rev_index))
            y = torch.cat(outs, dim=-1)  # (B, T, 2H)
            inp = self._dropout_between_layers(y, layer)
        return torch.where(mask, y, 0.0)

    def _kernel(self, lo: int, hi: int, inp: Tensor, state: State, low: torch.dtype | None, bidirectional: bool,
                batch_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        """One call of the fused kernel over ``self.cells[lo:hi]`` (whole layers of one or both
        directions, torch's flat weight order), starting from rows lo..hi-1 of ``state``: (y, *final).
        With ``low`` (CPU autocast) the casts are made here and autocast is off inside (see
        ``_forward_native``); with ``batch_sizes`` ``inp`` is packed data."""
        cells = self.cells[lo:hi]
        weights = [p for c in cells for p in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)]
        hx = tuple(s[lo:hi] for s in state)  # each (hi - lo, B, H)
        if low is not None:
            weights, hx = [w.to(low) for w in weights], tuple(h.to(low) for h in hx)
        kernel = cells[0].native
        run, h0 = getattr(torch._VF, kernel), (hx if kernel == "lstm" else hx[0])
        num_layers = (hi - lo) // (2 if bidirectional else 1)
        with torch.autocast("cpu", enabled=False) if low is not None else contextlib.nullcontext():
            if batch_sizes is None:
                return run(inp, h0, weights, True, num_layers, 0.0, self.training, bidirectional, True)
            return run(inp, batch_sizes, h0, weights, True, num_layers, 0.0, self.training, bidirectional)

    def _forward_native(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        D, L = self.num_directions, self.num_layers
        kernel = self.cells[0].native
        packed = None
        if lengths is not None:  # pack once for the whole stack; packed data flows between layers
            lengths_cpu = lengths.to("cpu")
            packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
            state = tuple(s.index_select(1, packed.sorted_indices) for s in state)
        # One kernel call for the whole stack, as nn.LSTM makes, unless dropout between layers is
        # on: then one call per layer, with the same masks the other backends draw.
        own_dropout = self.dropout > 0 and self.training and L > 1
        groups = [[layer] for layer in range(L)] if own_dropout else [list(range(L))]
        inp = x if packed is None else packed.data  # (B, T, I) or (N, I), N = sum of lengths
        low = _cpu_autocast_dtype(x) if kernel == "lstm" else None
        if low is not None:
            # Under CPU autocast the LSTM kernel runs in bfloat16 as autocast runs it, but with
            # the casts made here: autocast casts inside oneDNN's LSTM op (the one recurrent op on
            # its CPU list) without asking whether this CPU has a bfloat16 LSTM, and on one
            # without (AVX2 only, say) that op fails. Given bfloat16 tensors, PyTorch itself
            # picks oneDNN where it can and its own kernel where it cannot; bfloat16 either way.
            inp, state = inp.to(low), tuple(s.to(low) for s in state)
        finals: list[tuple[Tensor, ...]] = []
        for group in groups:
            out = self._kernel(group[0] * D, (group[-1] + 1) * D, inp, state, low, self.bidirectional,
                               None if packed is None else packed.batch_sizes)
            y = out[0]
            finals.append(tuple(out[1:]))
            if packed is not None and own_dropout and group[-1] < L - 1:
                # The very mask the other backends draw on (B, T, H * D), packed like the data:
                # dropout scales by a keep mask / (1 - p) drawn on a tensor shaped like its
                # input, so dropping ones gives that mask and y * mask its numbers bit for bit.
                noise = self._dropout_between_layers(y.new_ones(B, T, y.size(-1)), group[-1])
                inp = y * pack_padded_sequence(noise, lengths_cpu, batch_first=True, enforce_sorted=False).data
            else:
                inp = self._dropout_between_layers(y, group[-1])
        final = tuple(torch.cat(f, dim=0) for f in zip(*finals))  # each (L * D, B, H)
        if packed is not None:
            y, _ = pad_packed_sequence(PackedSequence(y, packed.batch_sizes, packed.sorted_indices,
                                                      packed.unsorted_indices), batch_first=True, total_length=T)
            final = tuple(h.index_select(1, packed.unsorted_indices) for h in final)
        return y, final


def _cpu_autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype CPU autocast runs the recurrent kernel in for x, or None when it is off."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    return torch.get_autocast_dtype("cpu")


def _flip(x: Tensor, rev_index: Tensor | None) -> Tensor:
    """Reverse time, within each sequence's own length when rev_index is given."""
    if rev_index is None:
        return x.flip(1)
    return x.gather(1, rev_index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def _padding(lengths: Tensor | None, T: int) -> tuple[Tensor | None, Tensor | None]:
    """(B, T, 1) True at real steps, and (B, T) the index that reverses each sequence within its
    own length (padding stays in place), on the lengths' device; (None, None) without lengths."""
    if lengths is None:
        return None, None
    steps = torch.arange(T, device=lengths.device)
    mask = length_mask(lengths, T).unsqueeze(-1)  # (B, T, 1)
    rev_index = torch.where(mask.squeeze(-1), lengths[:, None] - 1 - steps[None, :], steps[None, :])  # (B, T)
    return mask, rev_index


def length_mask(lengths: Tensor, T: int) -> Tensor:
    """(B,) lengths -> (B, T) True at each sequence's real steps, on the lengths' device."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _time_loop(cell: RecurrentCell, x: Tensor, state: State, mask: Tensor | None,
               states: list[State] | None = None) -> tuple[Tensor, State]:
    """Run ``cell`` left to right over x (B, T, I); past a sequence's end the state freezes
    and the output is exactly zero. ``states`` collects each step's computed state."""
    outs = []
    for t in range(x.size(1)):
        y, new = cell(x[:, t], state)
        if states is not None:
            states.append(tuple(new))
        if mask is None:
            state = tuple(new)
        else:
            m = mask[:, t]  # (B, 1)
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            y = torch.where(m, y, 0.0)
        outs.append(y)
    return torch.stack(outs, dim=1), state  # (B, T, H)
