"""Adaptive softmax: a cheaper output layer when the vocabulary dominates the cost.

Grave et al. 2017, "Efficient softmax approximation for GPUs". Ids are sorted by
frequency (``Vocab.build`` puts the most frequent first), so the first
``cutoffs[0]`` ids -- the *shortlist* -- cover most tokens. The head is a softmax
over the shortlist plus one entry per tail cluster; a tail cluster's own softmax
is computed only for the tokens whose target falls in it:

    P(w | h) = P_head(w | h)                          w in the shortlist
    P(w | h) = P_head(cluster c | h) * P_c(w | h)     w in tail cluster c

It is an exact distribution over the whole vocabulary (it sums to 1), so the
perplexity it reports is the model's true perplexity, not an estimate; only the
training and evaluation *loss* skip work, the full log-probabilities
(``log_prob``) are there for sampling and scoring.

Tied weights: with ``tied`` (the model's embedding) every word's output vector is
its embedding row, in the head and in the tails alike, as with a tied full
softmax. ``torch.nn.AdaptiveLogSoftmaxWithLoss`` is the same model without
tying (its tails shrink the input by ``div_value``, which a tied row cannot), so
this module carries both forms itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdaptiveSoftmax(nn.Module):
    """(..., in_features) -> log-probabilities over ``n_tokens`` ids, or the NLL of given targets.

    cutoffs: increasing ids that end the shortlist and each tail cluster but the last
    (``[2000, 10000]``: ids 0-1999 in the head, 2000-9999 and 10000-end in two tails).
    tied: an ``nn.Embedding`` of width ``in_features`` whose rows are the output vectors.
    div_value: untied tails project the input to ``in_features / div_value ** (i + 1)``.
    """

    def __init__(self, in_features: int, n_tokens: int, cutoffs: list[int], tied: nn.Embedding | None = None,
                 div_value: float = 4.0):
        super().__init__()
        cutoffs = [int(c) for c in cutoffs]
        if not cutoffs or any(b <= a for a, b in zip([0, *cutoffs], [*cutoffs, n_tokens])):
            raise ValueError(f"cutoffs {cutoffs} must increase strictly between 0 and the vocabulary size {n_tokens}")
        if tied is not None and tied.weight.shape != (n_tokens, in_features):
            raise ValueError(f"a tied embedding must be ({n_tokens}, {in_features}), not {tuple(tied.weight.shape)}")
        self.in_features, self.n_tokens = in_features, n_tokens
        self.bounds = [0, *cutoffs, n_tokens]  # cluster k holds ids bounds[k] .. bounds[k+1]-1; cluster 0 is the head
        self.shortlist = cutoffs[0]
        n_tails = len(cutoffs)
        self.tied = tied
        if tied is None:
            self.head_words = nn.Linear(in_features, self.shortlist, bias=False)
        self.head_clusters = nn.Linear(in_features, n_tails, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(self.shortlist + n_tails))
        self.tail_bias = nn.ParameterList(
            [nn.Parameter(torch.zeros(self.bounds[k + 1] - self.bounds[k])) for k in range(1, n_tails + 1)])
        if tied is None:
            self.tails = nn.ModuleList()
            for k in range(1, n_tails + 1):
                width = max(1, int(in_features // div_value ** k))
                self.tails.append(nn.Sequential(nn.Linear(in_features, width, bias=False),
                                                nn.Linear(width, self.bounds[k + 1] - self.bounds[k], bias=False)))

    def _head(self, h: Tensor) -> Tensor:
        words = (F.linear(h, self.tied.weight[: self.shortlist]) if self.tied is not None
                 else self.head_words(h))
        return torch.cat([words, self.head_clusters(h)], -1) + self.head_bias

    def _tail(self, k: int, h: Tensor) -> Tensor:
        """Logits of tail cluster k (1-based) for inputs h."""
        if self.tied is not None:
            logits = F.linear(h, self.tied.weight[self.bounds[k]: self.bounds[k + 1]])
        else:
            logits = self.tails[k - 1](h)
        return logits + self.tail_bias[k - 1]

    def log_prob(self, h: Tensor) -> Tensor:
        """(..., in_features) -> (..., n_tokens) log-probabilities (every id: for sampling and scoring)."""
        head = self._head(h).log_softmax(-1)
        parts = [head[..., : self.shortlist]]
        for k in range(1, len(self.bounds) - 1):
            cluster = head[..., self.shortlist + k - 1: self.shortlist + k]
            parts.append(cluster + self._tail(k, h).log_softmax(-1))
        return torch.cat(parts, -1)

    def forward(self, h: Tensor) -> Tensor:
        return self.log_prob(h)

    def nll(self, h: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean negative log-likelihood of ``targets`` (ids; ``ignore_index`` skipped), as
        ``F.cross_entropy(log_prob(h), targets)`` gives, computing each tail only for its own targets."""
        h = h.reshape(-1, self.in_features)
        targets = targets.reshape(-1)
        keep = targets != ignore_index
        h, targets = h[keep], targets[keep]
        head = self._head(h).log_softmax(-1)
        # cluster of each target: 0 for the shortlist, k for tail k
        cluster = torch.bucketize(targets, torch.tensor(self.bounds[1:-1], device=targets.device), right=True)
        head_target = torch.where(cluster == 0, targets, self.shortlist + cluster - 1)
        logp = head.gather(1, head_target[:, None]).squeeze(1)
        for k in range(1, len(self.bounds) - 1):
            rows = (cluster == k).nonzero().squeeze(1)
            if rows.numel():
                tail = self._tail(k, h[rows]).log_softmax(-1)
                logp = logp.index_add(0, rows, tail.gather(1, (targets[rows] - self.bounds[k])[:, None]).squeeze(1))
        return -logp.mean()
