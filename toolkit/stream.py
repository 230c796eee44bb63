"""Stateful streaming: feed a unidirectional model one token (or chunk) at a time.

``model.stream()`` (``model = toolkit.load(…)``) returns a :class:`Stream`. Each
``feed`` runs the head's own forward on the new steps only, with the recurrent
state carried over from the previous call (``Recurrent`` takes an initial state and
returns the final one, in the layout its docstring gives), and returns the outputs of
the new steps. Fed a sequence in any chunking, the outputs equal the whole-sequence
run's (tests hold them to 1e-5 for every built-in cell, depth 2 and a plugin cell).

What a step gives, per head:

- tagging: the scores and tag probabilities of each new token, and the tags of
  every token so far, decoded over the whole prefix as ``predict`` decodes (with
  Viterbi or a CRF a later token can change an earlier tag);
- classification: the class probabilities after each new token (the pooling,
  ``last`` / ``mean`` / ``max``, runs over the prefix read so far);
- language model: the next-token distribution after each step read. The first
  ``feed`` reads the start token ``<eos>`` first, exactly as ``score`` does, so the
  first row is the distribution of the first token.

A bidirectional model cannot stream (its reverse direction starts at the last
token), nor can an encoder-decoder; both refuse with one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from toolkit.errors import ConfigError
from toolkit.layers import Recurrent


@contextmanager
def carried_state(rnn: Recurrent, initial: tuple[Tensor, ...] | None, run=None):
    """Within the block, ``rnn`` starts from ``initial`` (None: zeros) whenever it is called
    without one, and the holder it yields records the final state of the last call.

    It lets a head's unchanged forward run on a chunk of a stream (and, with ``run``, a
    function ``(x, lengths, state) -> (y, state)`` used instead of the layer's forward,
    on the export's time loop)."""
    holder = _Holder()
    original = rnn.forward if run is None else run

    def forward(x, lengths=None, state=None, final_state=True):  # the final state is always kept here
        y, holder.final = original(x, lengths, initial if state is None else state)
        return y, holder.final

    rnn.forward = forward
    try:
        yield holder
    finally:
        del rnn.forward  # the class's own forward again


@dataclass
class _Holder:
    final: tuple[Tensor, ...] | None = None


@dataclass
class Step:
    """What one ``feed`` gives. ``tokens``: the steps read by this call; ``probs``: one row per
    step (tag / class / next-token probabilities); ``logits``: the network's scores behind them;
    ``tags`` (tagging): the tag of every token so far; ``label`` (classification): the most
    probable class after the last step."""

    tokens: list[str]
    probs: np.ndarray
    logits: np.ndarray
    tags: list[str] = field(default_factory=list)
    label: str | None = None


class Stream:
    """Feed a unidirectional model piece by piece; ``state`` holds the recurrent state
    (a tuple of (num_layers, 1, hidden_size) tensors, one per ``state_names``).

    What a step computes is the head's (``stream_step`` of its class in
    ``toolkit.inference``); this class carries the state and what the head keeps
    between steps (``memory``)."""

    def __init__(self, model):
        if model.task.rnn.bidirectional:
            raise ConfigError("a bidirectional model cannot stream: its reverse direction starts at the last "
                              "token, which a stream has not read yet (train with direction=uni to stream)")
        self.model, self.task = model, model.task
        self.reset()

    def reset(self) -> None:
        """Start a new sequence: zero state, nothing read."""
        self.state: tuple[Tensor, ...] | None = None
        self.steps = 0
        self.memory: dict = {}  # the head's own running values (a tagger's scores so far, a running pool)

    def _tokens_of(self, chunk: str | Sequence[str]) -> list[str]:
        toks = self.model.tokens(chunk) if isinstance(chunk, str) else list(chunk)
        if not toks:
            raise ConfigError(f"stream: the chunk {chunk!r} has no tokens for this model's tokenizer "
                              f"({self.model.spec['tokenizer']})")
        return toks

    @torch.no_grad()
    def feed(self, chunk: str | Sequence[str]) -> Step:
        """Read ``chunk`` (text, or a list of tokens) and return the outputs of its steps."""
        toks = self._tokens_of(chunk)
        with carried_state(self.task.rnn, self.state) as carry:
            step = self.model.stream_step(self, toks)
        self.state = carry.final
        self.steps += len(step.tokens)
        return step
