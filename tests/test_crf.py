"""The CRF output layer: likelihood, gradients and decoding against brute force over every tag sequence."""

import itertools

import pytest
import torch

from toolkit.tasks.crf import CRF, tag_scheme, transition_constraints
from toolkit.tasks.tagging import bio_to_bioes

BIO = ["B-loc", "B-per", "I-loc", "I-per", "O"]
BIOES = ["B-loc", "E-loc", "I-loc", "O", "S-loc"]


def _valid(path, constraints):
    allowed, start, end = constraints
    return bool(start[path[0]]) and bool(end[path[-1]]) and all(
        bool(allowed[a, b]) for a, b in zip(path, path[1:]))


def _brute(crf, emissions, n):
    """Every allowed path's score for one sentence of length n: (paths, scores)."""
    trans, start, end = crf.scores()
    paths, scores = [], []
    for path in itertools.product(range(crf.num_tags), repeat=n):
        s = start[path[0]] + end[path[-1]] + sum(emissions[t, path[t]] for t in range(n)) + sum(
            trans[a, b] for a, b in zip(path, path[1:]))
        if torch.isfinite(s):
            paths.append(path)
            scores.append(s)
    return paths, torch.stack(scores)


@pytest.mark.parametrize("labels", [BIO, BIOES, None], ids=["bio", "bioes", "unconstrained"])
def test_crf_likelihood_and_gradients_match_a_sum_over_every_tag_sequence(labels):
    torch.manual_seed(0)
    k = len(labels) if labels else 3
    constraints = transition_constraints(labels) if labels else None
    crf = CRF(k, constraints)
    with torch.no_grad():  # learned scores that are not all zero
        for p in crf.parameters():
            p.normal_()
    lengths = torch.tensor([4, 2, 3])
    emissions = torch.randn(3, 4, k, requires_grad=True)
    tags = torch.full((3, 4), -100)
    golds = []
    for b, n in enumerate(lengths.tolist()):  # a random valid gold path per sentence
        paths, _ = _brute(crf, emissions.detach()[b], n)
        gold = paths[torch.randint(len(paths), ()).item()]
        golds.append(gold)
        tags[b, :n] = torch.tensor(gold)
    nll = crf.nll(emissions, tags, lengths)
    ref = 0
    for b, n in enumerate(lengths.tolist()):
        paths, scores = _brute(crf, emissions[b], n)
        ref = ref + torch.logsumexp(scores, 0) - scores[paths.index(tuple(golds[b]))]
    assert torch.allclose(nll, ref, atol=1e-5)
    grads = torch.autograd.grad(nll, [emissions, crf.transitions, crf.start, crf.end])
    ref_grads = torch.autograd.grad(ref, [emissions, crf.transitions, crf.start, crf.end])
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    assert grads[0][1, 2:].abs().max() == 0  # padded steps take no part


@pytest.mark.parametrize("labels", [BIO, BIOES])
def test_crf_decode_is_the_best_allowed_path_and_never_invalid(labels):
    torch.manual_seed(1)
    constraints = transition_constraints(labels)
    crf = CRF(len(labels), constraints)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    for _ in range(5):
        lengths = torch.tensor([4, 1, 3])
        emissions = torch.randn(3, 4, len(labels)) * 3
        for b, path in enumerate(crf.decode(emissions, lengths)):
            paths, scores = _brute(crf, emissions[b], int(lengths[b]))
            assert tuple(path) == paths[int(scores.argmax())]
            assert _valid(path, constraints)


def test_constraints_follow_the_schemes():
    assert tag_scheme(BIO) == "bio" and tag_scheme(BIOES) == "bioes" and tag_scheme(["NN", "VB"]) is None
    allowed, start, end = transition_constraints(BIO)
    idx = {t: i for i, t in enumerate(BIO)}
    assert allowed[idx["B-loc"], idx["I-loc"]] and not allowed[idx["B-per"], idx["I-loc"]]
    assert not allowed[idx["O"], idx["I-per"]] and not start[idx["I-per"]] and end.all()
    allowed, start, end = transition_constraints(BIOES)
    idx = {t: i for i, t in enumerate(BIOES)}
    assert allowed[idx["B-loc"], idx["E-loc"]] and not allowed[idx["B-loc"], idx["O"]]
    assert not allowed[idx["O"], idx["E-loc"]] and allowed[idx["E-loc"], idx["S-loc"]]
    assert not end[idx["B-loc"]] and not end[idx["I-loc"]] and not start[idx["E-loc"]]


def test_bio_to_bioes_round_trip():
    labels = ["B-per", "I-per", "O"]
    tags, to_bioes, to_bio = bio_to_bioes(labels)
    assert tags == ["B-per", "E-per", "I-per", "O", "S-per"]
    # table[bio id, next is I-]: B alone -> S, B then I -> B, I last -> E, I then I -> I
    assert [tags[i] for i in to_bioes[0].tolist()] == ["S-per", "B-per"]
    assert [tags[i] for i in to_bioes[1].tolist()] == ["E-per", "I-per"]
    assert [labels[i] for i in to_bio.tolist()] == ["B-per", "I-per", "I-per", "O", "B-per"]
