"""Sampling draws from the distribution it claims: softmax(logits / T), cut to the k best with top_k.

The model under test is a language model whose next-token scores are fixed (output weights zero,
the bias holds the logits), so the distribution every sample is drawn from is known exactly.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from toolkit.tasks.lm import LanguageModelTask

VOCAB = ["<pad>", "<unk>", "<eos>", "a", "b", "c", "d"]
SPEC = {"kind": "language_model", "tokenizer": "chars", "normalize": "lower", "labels": [], "conditions": [],
        "source": None, "vocab": VOCAB}
LOGITS = {"<pad>": 0.0, "<unk>": 0.0, "<eos>": 0.0, "a": 2.0, "b": 1.0, "c": 0.0, "d": -1.0}
# chi2.ppf(0.999, df): a right distribution fails this one time in a thousand (and the draws are seeded)
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}


def fixed_model(logits: dict[str, float] = LOGITS) -> LanguageModelTask:
    model = LanguageModelTask(spec=SPEC, cell={"name": "lstm"}, hidden_size=8, embedding_dim=8).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([logits[t] for t in VOCAB]))
    return model


def expected(tokens: list[str], temperature: float, logits: dict[str, float] = LOGITS) -> dict[str, float]:
    """softmax(logits / T) over ``tokens``, worked out here."""
    weights = {t: math.exp(logits[t] / temperature) for t in tokens}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def first_tokens(model, n: int, **kw) -> Counter:
    """The first token of ``n`` samples (the first step may not end a sample, nor emit <pad>/<unk>)."""
    samples = model.sample(n, max_len=1, **kw)
    assert all(len(s) == 1 for s in samples)
    return Counter(s[0] for s in samples)


def chi_square(counts: Counter, probs: dict[str, float]) -> float:
    n = sum(counts.values())
    assert set(counts) <= set(probs), f"drew {set(counts) - set(probs)}, which has probability 0"
    return sum((counts[t] - n * p) ** 2 / (n * p) for t, p in probs.items())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_samples_follow_softmax_of_the_logits_over_the_temperature(temperature):
    counts = first_tokens(fixed_model(), 4000, temperature=temperature, seed=0)
    probs = expected(["a", "b", "c", "d"], temperature)
    assert chi_square(counts, probs) < CHI2_999[3], (counts, probs)
    total_variation = 0.5 * sum(abs(counts[t] / 4000 - p) for t, p in probs.items())
    assert total_variation < 0.03, (counts, probs)


def test_the_temperatures_are_told_apart():
    """The bound above is tight enough to tell T = 0.5 from T = 1 (so a sampler that ignored T would fail)."""
    counts = first_tokens(fixed_model(), 4000, temperature=1.0, seed=0)
    assert chi_square(counts, expected(["a", "b", "c", "d"], 0.5)) > 10 * CHI2_999[3]


def test_temperature_zero_always_takes_the_most_probable_token():
    assert first_tokens(fixed_model(), 50, temperature=0, seed=0) == Counter({"a": 50})


def test_top_k_draws_only_the_k_best_in_their_renormalised_proportions():
    counts = first_tokens(fixed_model(), 3000, temperature=1.0, top_k=2, seed=0)
    assert set(counts) == {"a", "b"}, counts
    assert chi_square(counts, expected(["a", "b"], 1.0)) < CHI2_999[1], counts


def test_top_k_with_a_temperature():
    counts = first_tokens(fixed_model(), 3000, temperature=2.0, top_k=3, seed=1)
    assert set(counts) == {"a", "b", "c"}, counts
    assert chi_square(counts, expected(["a", "b", "c"], 2.0)) < CHI2_999[2], counts


def test_top_k_counts_only_tokens_that_may_be_drawn():
    """<unk> (the highest score here) is removed before the k best are chosen, so top_k=2 still
    leaves two tokens to draw from."""
    model = fixed_model({**LOGITS, "<unk>": 5.0})
    counts = first_tokens(model, 2000, temperature=1.0, top_k=2, seed=0)
    assert set(counts) == {"a", "b"}, counts
    unk = first_tokens(model, 2000, temperature=1.0, top_k=2, seed=0, allow_unk=True)
    assert set(unk) == {"<unk>", "a"}, unk


def test_later_steps_may_end_the_sample_with_eos_at_its_probability():
    """After the first token, <eos> competes too: a sample's length is geometric with
    P(stop) = p(<eos>), which the mean length shows."""
    model = fixed_model({**LOGITS, "<eos>": 1.5})
    samples = model.sample(3000, temperature=1.0, max_len=50, seed=0)
    p_stop = expected(["<eos>", "a", "b", "c", "d"], 1.0, {**LOGITS, "<eos>": 1.5})["<eos>"]
    mean_length = sum(len(s) for s in samples) / len(samples)
    # 1 forced token, then a geometric number of further ones: mean 1 + (1 - p) / p
    assert mean_length == pytest.approx(1 + (1 - p_stop) / p_stop, rel=0.05)
    assert all(s and "<eos>" not in s for s in samples)


def test_the_same_seed_repeats_and_other_seeds_differ():
    model = fixed_model()
    runs = {seed: model.sample(20, temperature=1.0, max_len=5, seed=seed) for seed in (0, 1, 2)}
    assert model.sample(20, temperature=1.0, max_len=5, seed=1) == runs[1]
    assert runs[0] != runs[1] and runs[1] != runs[2] and runs[0] != runs[2]
