"""Tag decoding gives the right answer: Viterbi against a search over every tag sequence, BIO validity,
padding, and `model.decode=greedy` / `viterbi` from the config through a checkpoint to `rtk predict`."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TINY, rtk_cmd
from toolkit.tasks.tagging import bio_constraints, viterbi

LABELS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # sorted, as the data module orders them


def may_follow(prev: str, tag: str) -> bool:
    """BIO: I-x only right after B-x or I-x."""
    return not tag.startswith("I-") or (prev != "O" and prev[2:] == tag[2:])


def bio_valid(tags: list[str]) -> bool:
    """Every tag may follow the one before it, and the first may follow O (so is no I-x)."""
    return all(may_follow(prev, tag) for prev, tag in zip(["O", *tags], tags))


def brute_force(log_probs: torch.Tensor, labels: list[str] | None) -> tuple[list[int], float]:
    """The best-scoring tag sequence of one sentence (T, K) by scoring all K**T of them;
    with ``labels``, only the BIO-valid ones (by the rule of :func:`bio_valid`, written anew)."""
    t, k = log_probs.shape
    paths = torch.tensor(list(itertools.product(range(k), repeat=t)))  # (K**T, T)
    scores = log_probs[torch.arange(t), paths].sum(-1)  # (K**T,)
    if labels is not None:
        inside = torch.tensor([tag.startswith("I-") for tag in labels])[paths]  # (K**T, T)
        kind = torch.tensor([labels.index("B-" + tag[2:]) if tag != "O" else -1 for tag in labels])[paths]
        follows = torch.cat([torch.zeros_like(inside[:, :1]), kind[:, 1:] == kind[:, :-1]], 1)
        follows &= torch.cat([torch.zeros_like(inside[:, :1]), kind[:, :-1] >= 0], 1)
        scores = scores.masked_fill((inside & ~follows).any(-1), float("-inf"))
    best = int(scores.argmax())
    return paths[best].tolist(), float(scores[best])


def path_score(log_probs: torch.Tensor, path: list[int]) -> float:
    return float(log_probs[torch.arange(len(path)), torch.tensor(path)].sum())


def random_emissions(gen: torch.Generator, b: int, t: int, k: int = len(LABELS)) -> torch.Tensor:
    # a wide spread, so that the per-token argmax is often an invalid sequence
    return (3 * torch.randn(b, t, k, generator=gen, dtype=torch.float64)).log_softmax(-1)


# ----------------------------------------------------------------------------- bio_constraints
def test_bio_constraints_allow_i_x_only_after_b_x_or_i_x_and_never_first():
    allowed, start = bio_constraints(LABELS)
    for i, prev in enumerate(LABELS):
        for j, tag in enumerate(LABELS):
            assert bool(allowed[i, j]) == may_follow(prev, tag), (prev, tag)
    assert start.tolist() == [not t.startswith("I-") for t in LABELS]


def test_bio_constraints_are_none_for_tags_that_are_not_bio():
    assert bio_constraints(["NOUN", "VERB", "O"]) is None
    assert bio_constraints(["O", "B-PER", "E-PER"]) is None


# ----------------------------------------------------------------------------- viterbi
def test_viterbi_finds_the_best_bio_valid_sequence_of_every_sentence():
    """On random emissions, Viterbi's path is the best of all 5**T sequences that obey BIO."""
    gen = torch.Generator().manual_seed(0)
    constraints = bio_constraints(LABELS)
    argmax_invalid = 0
    for t in (1, 2, 3, 4, 5):
        emissions = random_emissions(gen, 8, t)
        paths = viterbi(emissions, torch.full((8,), t), *constraints)
        for row, path in zip(emissions, paths):
            best, score = brute_force(row, LABELS)
            assert path == best, (t, [LABELS[i] for i in path], [LABELS[i] for i in best])
            assert path_score(row, path) == pytest.approx(score, abs=1e-9)
            argmax_invalid += not bio_valid([LABELS[i] for i in row.argmax(-1).tolist()])
    assert argmax_invalid >= 10, "the emissions should often make the per-token argmax invalid"


def test_viterbi_without_constraints_is_the_best_of_all_sequences():
    gen = torch.Generator().manual_seed(1)
    k = len(LABELS)
    allowed, start = torch.ones(k, k, dtype=torch.bool), torch.ones(k, dtype=torch.bool)
    emissions = random_emissions(gen, 6, 4)
    for row, path in zip(emissions, viterbi(emissions, torch.full((6,), 4), allowed, start)):
        assert path == brute_force(row, None)[0] == row.argmax(-1).tolist()


def test_viterbi_ignores_padding_whatever_scores_it_holds():
    """Sentences of lengths 1..5 in one padded batch decode exactly as each one alone; the padded
    steps hold scores that would pull any path that read them towards an invalid I-PER."""
    gen = torch.Generator().manual_seed(2)
    constraints = bio_constraints(LABELS)
    lengths = torch.tensor([5, 1, 3, 2, 4, 5, 2, 3])
    emissions = random_emissions(gen, len(lengths), 5)
    for i, n in enumerate(lengths.tolist()):
        emissions[i, n:] = torch.tensor([-50.0, -50.0, -50.0, 0.0, -50.0], dtype=torch.float64)
    emissions[:, :, LABELS.index("O")] -= 1.0  # fewer all-O answers, more for the padding to disturb
    paths = viterbi(emissions, lengths, *constraints)
    assert [len(p) for p in paths] == lengths.tolist()
    for row, n, path in zip(emissions, lengths.tolist(), paths):
        assert path == viterbi(row[None, :n], torch.tensor([n]), *constraints)[0]
        assert path == brute_force(row[:n], LABELS)[0]


def test_viterbi_never_decodes_an_invalid_bio_sequence():
    gen = torch.Generator().manual_seed(3)
    constraints = bio_constraints(LABELS)
    emissions = random_emissions(gen, 200, 12)
    emissions[..., LABELS.index("I-PER")] += 2.0  # an I-PER wherever the scores allow one
    lengths = torch.randint(1, 13, (200,), generator=gen)
    paths = viterbi(emissions, lengths, *constraints)
    assert all(bio_valid([LABELS[i] for i in p]) for p in paths)
    assert sum("I-PER" in [LABELS[i] for i in p] for p in paths) > 20  # I-PER still appears where valid


# ----------------------------------------------------------------------------- the model's decode option
def conll(sentences) -> str:
    return "\n\n".join("\n".join(f"{tok}\t{tag}" for tok, tag in s) for s in sentences) + "\n"


TAGGED = [[("Harry", "B-PER"), ("visits", "O"), ("Paris", "B-LOC")],
          [("Hermione", "B-PER"), ("Granger", "I-PER"), ("reads", "O")],
          [("the", "O"), ("London", "B-LOC"), ("Eye", "I-LOC")]]
SENTENCE = "Harry visits the London Eye with Hermione Granger"


@pytest.fixture(scope="module")
def greedy_ckpt(tmp_path_factory):
    """One tiny tagger trained with model.decode=greedy on a user's CoNLL files."""
    tmp_path = tmp_path_factory.mktemp("tagger")
    for name, n in (("train", 20), ("dev", 3), ("test", 3)):
        (tmp_path / f"{name}.conll").write_text(conll(TAGGED * n))
    run_dir = tmp_path / "run"
    r = rtk_cmd("train", "task=tagging", f"data.train_file={tmp_path / 'train.conll'}",
                f"data.val_file={tmp_path / 'dev.conll'}", f"data.test_file={tmp_path / 'test.conll'}",
                "data.batch_size=8", "model.char_filters=0", "model.decode=greedy", f"hydra.run.dir={run_dir}",
                *TINY, cwd=tmp_path, env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert r.returncode == 0, r.explain()
    return run_dir / "checkpoints" / "best.ckpt"


def favour_i_per(ckpt, out, decode: str):
    """A copy of the checkpoint whose output layer says I-PER for every token, decoded with
    ``decode``: only the decoding rule stands between it and an invalid sequence."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["spec"]["labels"] == LABELS
    bias = state["state_dict"]["out.bias"]
    bias[LABELS.index("I-PER")] = bias.abs().max() + 50.0
    state["hyper_parameters"]["decode"] = decode
    torch.save(state, out)
    return out


def predicted_tags(ckpt, cwd) -> list[str]:
    p = rtk_cmd("predict", f"ckpt={ckpt}", f"text={SENTENCE}", cwd=cwd)
    assert p.returncode == 0, p.explain()
    pairs = [line.split("\t") for line in p.stdout.splitlines()]
    assert [tok for tok, _ in pairs] == SENTENCE.split()
    return [tag for _, tag in pairs]


@pytest.mark.slow
def test_greedy_decoding_from_the_config_reaches_rtk_predict(greedy_ckpt, tmp_path):
    """model.decode=greedy: the checkpoint keeps the choice, and `rtk predict` prints the per-token
    argmax even where it breaks BIO (viterbi, below, would not)."""
    assert torch.load(greedy_ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["decode"] == "greedy"
    ckpt = favour_i_per(greedy_ckpt, tmp_path / "greedy.ckpt", "greedy")
    assert predicted_tags(ckpt, tmp_path) == ["I-PER"] * len(SENTENCE.split())


def test_the_crf_is_the_default_decoding(compose):
    # the tagger's default since the CRF output layer (docs/results.md); viterbi stays one switch away
    assert compose(["task=tagging"]).model.decode == "crf"
    assert compose(["task=ner"]).model.decode == "crf"
    assert compose(["task=ner", "model.decode=viterbi"]).model.decode == "viterbi"


@pytest.mark.slow
def test_viterbi_decoding_keeps_rtk_predict_bio_valid_and_best(greedy_ckpt, tmp_path):
    from toolkit.data.tagging import collate_tagging, encode_tagging
    from toolkit.checkpoints import load_task

    ckpt = favour_i_per(greedy_ckpt, tmp_path / "viterbi.ckpt", "viterbi")
    tags = predicted_tags(ckpt, tmp_path)
    assert bio_valid(tags) and "I-PER" in tags
    # and it is the best valid sequence under the model's own scores
    model = load_task(ckpt)
    spec = model.hparams.spec
    batch = collate_tagging([encode_tagging(SENTENCE.split(), model.vocab, spec["normalize"], model.chars)])
    with torch.no_grad():
        log_probs = model(batch).log_softmax(-1)[0].double()
    assert tags == [LABELS[i] for i in brute_force(log_probs, LABELS)[0]]
