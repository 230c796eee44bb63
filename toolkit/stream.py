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

from toolkit.data.lm import encode_lm
from toolkit.data.classification import collate_classification
from toolkit.data.tagging import collate_tagging, encode_tagging
from toolkit.data.text import EOS, normalize
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

    def forward(x, lengths=None, state=None):
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
    (a tuple of (num_layers, 1, hidden_size) tensors, one per ``state_names``)."""

    def __init__(self, model):
        task = model.task
        if task.rnn.bidirectional:
            raise ConfigError("a bidirectional model cannot stream: its reverse direction starts at the last "
                              "token, which a stream has not read yet (train with direction=uni to stream)")
        if model.head not in ("tagging", "classification", "language_model"):
            raise ConfigError(f"a {model.head} model cannot stream")
        self.model, self.task = model, task
        self.reset()

    def reset(self) -> None:
        """Start a new sequence: zero state, nothing read."""
        self.state: tuple[Tensor, ...] | None = None
        self.steps = 0
        self._emissions: list[Tensor] = []  # tagging: every token's scores so far
        self._tokens: list[str] = []
        self._pool: Tensor | None = None  # classification: running sum (mean) or max

    def _tokens_of(self, chunk: str | Sequence[str]) -> list[str]:
        if isinstance(chunk, str):
            toks = self.model.tokens(chunk)
        else:
            toks = list(chunk)
        if not toks:
            raise ConfigError(f"stream: the chunk {chunk!r} has no tokens for this model's tokenizer "
                              f"({self.model.spec['tokenizer']})")
        return toks

    @torch.no_grad()
    def feed(self, chunk: str | Sequence[str]) -> Step:
        """Read ``chunk`` (text, or a list of tokens) and return the outputs of its steps."""
        toks = self._tokens_of(chunk)
        head = self.model.head
        task, device = self.task, self.model.device
        with carried_state(task.rnn, self.state) as carry:
            if head == "tagging":
                item = encode_tagging(toks, task.vocab, self.model.spec["normalize"], task.chars)
                batch = {k: v.to(device) for k, v in collate_tagging([item]).items()}
                logits = task(batch)[0]  # (n, K)
            elif head == "classification":
                item = {"tokens": task.vocab.encode(normalize(t, self.model.spec["normalize"]) for t in toks)}
                batch = {k: v.to(device) for k, v in collate_classification([item]).items()}
                y = task.encode(batch)[0]  # (n, H)
                logits = task.out(self._pooled(y))  # (n, K)
            else:
                ids = encode_lm(toks, [], task.vocab)["tokens"]  # <eos> first, as score reads it
                if self.steps:
                    ids = ids[1:]
                else:
                    toks = [EOS, *toks]
                logits, _ = task(torch.tensor([ids], device=device))
                logits = logits[0]  # (n, V)
        self.state = carry.final
        self.steps += len(toks)
        probs = logits.softmax(-1)
        step = Step(tokens=toks, probs=probs.cpu().numpy(), logits=logits.cpu().numpy())
        if head == "tagging":
            self._emissions.append(logits)
            self._tokens += toks
            every = torch.cat(self._emissions)[None]  # (1, steps, K)
            path = task.decode(every, torch.tensor([every.size(1)], device=device))[0]
            step.tags = [self.model.labels[i] for i in path]
            if task.crf is not None:
                step.probs = self.model._marginals(every, torch.tensor([every.size(1)], device=device))[
                    0, -len(toks):].cpu().numpy()
        elif head == "classification":
            step.label = self.model.labels[int(step.probs[-1].argmax())]
        return step

    def _pooled(self, y: Tensor) -> Tensor:
        """(n, H) outputs of the new steps -> (n, H) pooled over everything read up to each step."""
        pooling = self.task.hparams.pooling
        if pooling == "last":
            return y
        if pooling == "max":
            run = y.cummax(0).values
            if self._pool is not None:
                run = torch.maximum(run, self._pool)
            self._pool = run[-1]
            return run
        run = y.cumsum(0)  # mean: the running sum over the running count
        if self._pool is not None:
            run = run + self._pool
        self._pool = run[-1]
        count = torch.arange(self.steps + 1, self.steps + y.size(0) + 1, device=y.device, dtype=y.dtype)
        return run / count[:, None]

