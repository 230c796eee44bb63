"""Decoding tag sequences: transition constraints, Viterbi, and a linear-chain CRF.

A tagger scores every tag at every token (emissions, (B, T, K)). Read alone,
each token's best tag can form sequences no scheme allows (``I-person`` after
``O``). Two ways to decode a whole sentence at once:

- ``viterbi`` over per-token log-probabilities with hard transition constraints
  (the softmax tagger's ``model.decode=viterbi``);
- a linear-chain CRF (``model.decode=crf``, Lample et al. 2016): learned
  transition scores A[i, j] (tag i followed by tag j), start and end scores, and
  the sentence-level likelihood

      score(x, y) = start[y_1] + sum_t E[t, y_t] + sum_t A[y_{t-1}, y_t] + end[y_T]
      -log p(y | x) = log sum_{y'} exp score(x, y') - score(x, y)

  whose normaliser is the forward algorithm; Viterbi finds the best y. The
  constraints stay hard (-inf) in both, so no invalid sequence is ever scored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toolkit.layers import length_mask

SCHEMES = ("bio", "bioes")


def tag_scheme(labels: list[str]) -> str | None:
    """``bioes`` when any tag is E-/S-, ``bio`` when all are O / B- / I-, else None."""
    if not all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in labels):
        return None
    return "bioes" if any(t[:2] in ("E-", "S-") for t in labels) else "bio"


def transition_constraints(labels: list[str]) -> tuple[Tensor, Tensor, Tensor] | None:
    """(allowed (K, K), start (K,), end (K,)) for BIO or BIOES tags, else None.

    allowed[i, j]: tag j may follow tag i; start[j]: j may open a sentence; end[i]:
    i may close one. BIO: ``I-x`` only after ``B-x`` / ``I-x``. BIOES: inside an
    entity (after ``B-x`` / ``I-x``) only ``I-x`` / ``E-x`` follow; outside one
    (after ``O`` / ``E-`` / ``S-``, or at the start) only ``O`` / ``B-`` / ``S-``.
    """
    scheme = tag_scheme(labels)
    if scheme is None:
        return None
    k = len(labels)
    prefix = [t[:1] for t in labels]
    kind = [t[2:] for t in labels]
    if scheme == "bio":
        allowed = torch.ones(k, k, dtype=torch.bool)
        for j in range(k):
            if prefix[j] == "I":
                for i in range(k):
                    allowed[i, j] = prefix[i] in ("B", "I") and kind[i] == kind[j]
        start = torch.tensor([p != "I" for p in prefix])
        end = torch.ones(k, dtype=torch.bool)
        return allowed, start, end
    opens = torch.tensor([p in ("O", "B", "S") for p in prefix])  # may come outside an entity
    allowed = torch.zeros(k, k, dtype=torch.bool)
    for i in range(k):
        if prefix[i] in ("B", "I"):  # inside: continue or close the same entity
            allowed[i] = torch.tensor([p in ("I", "E") and kind[j] == kind[i] for j, p in enumerate(prefix)])
        else:
            allowed[i] = opens
    end = torch.tensor([p in ("O", "E", "S") for p in prefix])
    return allowed, opens.clone(), end


def bio_constraints(labels: list[str]) -> tuple[Tensor, Tensor] | None:
    """For BIO tags: allowed[i, j] says tag j may follow tag i, start[j] that j may open a sentence.

    ``I-x`` may only follow ``B-x`` or ``I-x``. None when the labels are not BIO.
    """
    if tag_scheme(labels) != "bio":
        return None
    allowed, start, _ = transition_constraints(labels)
    return allowed, start


def _blocked(ok: Tensor, like: Tensor) -> Tensor:
    """0 where allowed, -inf where not, as a float tensor on ``like``'s device."""
    return torch.where(ok.to(like.device), 0.0, float("-inf")).to(like.dtype)


def viterbi_scores(emissions: Tensor, lengths: Tensor, trans: Tensor, start: Tensor,
                   end: Tensor | None = None) -> list[list[int]]:
    """The tag sequence maximising start + emissions + transitions + end, per sentence.

    emissions: (B, T, K); lengths: (B,); trans: (K, K) score of tag i -> tag j;
    start, end: (K,) scores (-inf forbids). Padded steps never enter a path.
    """
    b, t, _ = emissions.shape
    lengths = lengths.to(emissions.device)
    score = emissions[:, 0] + start  # (B, K)
    back = []
    for step in range(1, t):
        best, idx = (score[:, :, None] + trans[None]).max(1)  # (B, K): best previous tag for each tag
        live = (lengths > step)[:, None]  # (B, 1)
        score = torch.where(live, best + emissions[:, step], score)
        back.append(idx)
    if end is not None:
        score = score + end
    paths = []
    for i, n in enumerate(lengths.tolist()):
        tag = int(score[i].argmax())
        path = [tag]
        for step in range(n - 1, 0, -1):
            tag = int(back[step - 1][i, tag])
            path.append(tag)
        paths.append(path[::-1])
    return paths


def viterbi(log_probs: Tensor, lengths: Tensor, allowed: Tensor, start: Tensor,
            end: Tensor | None = None) -> list[list[int]]:
    """The most probable tag sequence that obeys the transitions, per sentence.

    log_probs: (B, T, K) per-token log-probabilities; lengths: (B,); allowed (K, K),
    start (K,) and end (K,) booleans as from :func:`transition_constraints`.
    """
    return viterbi_scores(log_probs, lengths, _blocked(allowed, log_probs), _blocked(start, log_probs),
                          None if end is None else _blocked(end, log_probs))


class CRF(nn.Module):
    """Linear-chain CRF over emissions (B, T, K): learned transitions, hard constraints.

    Args:
        num_tags: K.
        constraints: (allowed, start, end) booleans (see :func:`transition_constraints`),
            or None for none.

    ``nll`` is the negative log-likelihood of the gold sequences summed over the
    batch; ``decode`` the Viterbi paths. Padded steps (past ``lengths``) take no part.
    """

    def __init__(self, num_tags: int, constraints: tuple[Tensor, Tensor, Tensor] | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [i, j]: i followed by j
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        if constraints is None:
            ones = torch.ones(num_tags, dtype=torch.bool)
            constraints = (torch.ones(num_tags, num_tags, dtype=torch.bool), ones, ones)
        allowed, start, end = constraints
        self.register_buffer("allowed", allowed.clone(), persistent=False)
        self.register_buffer("allowed_start", start.clone(), persistent=False)
        self.register_buffer("allowed_end", end.clone(), persistent=False)

    def scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """(trans, start, end) with the forbidden entries at -inf."""
        return (self.transitions + _blocked(self.allowed, self.transitions),
                self.start + _blocked(self.allowed_start, self.start),
                self.end + _blocked(self.allowed_end, self.end))

    def log_partition(self, emissions: Tensor, lengths: Tensor) -> Tensor:
        """log Z per sentence (B,): the forward algorithm, log-sum-exp over every allowed path."""
        trans, start, end = self.scores()
        lengths = lengths.to(emissions.device)
        alpha = emissions[:, 0] + start  # (B, K)
        for step in range(1, emissions.size(1)):
            nxt = torch.logsumexp(alpha[:, :, None] + trans[None], dim=1) + emissions[:, step]  # (B, K)
            alpha = torch.where((lengths > step)[:, None], nxt, alpha)
        return torch.logsumexp(alpha + end, dim=-1)

    def path_score(self, emissions: Tensor, tags: Tensor, lengths: Tensor) -> Tensor:
        """score(x, y) per sentence (B,) for the tag ids ``tags`` (B, T); padding may hold anything."""
        trans, start, end = self.scores()
        b, t, _ = emissions.shape
        lengths = lengths.to(emissions.device)
        live = length_mask(lengths, t)  # (B, T)
        y = torch.where(live, tags, 0)
        emit = emissions.gather(-1, y[..., None]).squeeze(-1)  # (B, T)
        step = trans[y[:, :-1], y[:, 1:]]  # (B, T-1)
        total = torch.where(live, emit, 0.0).sum(1) + torch.where(live[:, 1:], step, 0.0).sum(1)
        last = y.gather(1, (lengths - 1)[:, None]).squeeze(1)  # (B,)
        return total + start[y[:, 0]] + end[last]

    def nll(self, emissions: Tensor, tags: Tensor, lengths: Tensor) -> Tensor:
        """Sum over the batch of -log p(tags | x)."""
        return (self.log_partition(emissions, lengths) - self.path_score(emissions, tags, lengths)).sum()

    @torch.no_grad()
    def decode(self, emissions: Tensor, lengths: Tensor) -> list[list[int]]:
        trans, start, end = self.scores()
        return viterbi_scores(emissions, lengths, trans, start, end)
